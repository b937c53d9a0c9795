"""Training: the proto-lm model (torch), its data, losses, projection and evaluation.

Heavy modules (torch, transformers) are imported by the submodules that need them, so
``import protolm`` and the command definitions stay cheap.
"""

__version__ = "0.1.0"
