"""proto-lm: prototype-based, self-explaining text classification.

Heavy modules (torch, transformers) are imported by the submodules that need them, so
``protolm.options`` and ``protolm.errors`` stay importable without torch.
"""

__version__ = "0.1.0"
