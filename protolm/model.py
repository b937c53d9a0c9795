"""proto-lm and its plain baseline, on any Hugging Face encoder, saved as a directory.

A model directory holds ``config.json`` (this module's :class:`ModelConfig`), the encoder's
own ``encoder/config.json``, ``model.safetensors`` and the tokenizer files. Projection adds
``exemplars.json`` (see :mod:`protolm.projection`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from core.similarity import DEFAULT_SIMILARITY
from protolm.encoders import DEFAULT_ENCODER, load_encoder
from core.errors import ConfigError
from protolm.layers import PrototypeLayer, TokenAttention

MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENCODER_DIR = "encoder"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model's architecture (not its training run)."""

    architecture: str  # "protolm" or "baseline"
    label_names: list[str]
    encoder: str = DEFAULT_ENCODER
    is_pair: bool = False
    max_length: int = 128
    prototypes_per_class: int = 100
    similarity: str = DEFAULT_SIMILARITY
    epsilon: float = 1e-4
    dropout: float = 0.1
    uses_token_type_ids: bool = True
    format_version: int = MODEL_FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def num_prototypes(self) -> int:
        return self.num_classes * self.prototypes_per_class


def prototypes_per_class(num_prototypes: int, num_classes: int) -> int:
    """The paper's N, clamped so every class gets at least one prototype and N splits evenly."""
    return max(1, num_prototypes // num_classes)


@dataclass
class ClassifierOutput:
    """One forward pass: everything a loss or an explanation needs, so none runs twice."""

    logits: torch.Tensor
    pooled: torch.Tensor
    token_attention: torch.Tensor | None = None
    similarities: torch.Tensor | None = None
    distances: torch.Tensor | None = None


class EncoderClassifier(nn.Module):
    """Shared plumbing: tokenisation, the encoder call, and the directory format."""

    architecture: ClassVar[str]

    def __init__(self, config: ModelConfig, encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def tokenize(self, texts: list[str], text_pairs: list[str] | None = None, max_length: int | None = None, pad: bool = True):
        """Batch encoding truncated to ``max_length`` tokens: tensors padded to the longest
        input, or (``pad=False``) one list of ids per input."""
        if text_pairs is not None and not self.config.is_pair:
            raise ConfigError("this model classifies single texts; it was given text pairs")
        if text_pairs is None and self.config.is_pair:
            raise ConfigError("this model classifies text pairs; it was given single texts")
        encoded = self.tokenizer(
            texts,
            text_pairs,
            truncation=True,
            max_length=max_length or self.config.max_length,
            padding=pad,
            return_tensors="pt" if pad else None,
            split_special_tokens=True,  # "[SEP]" typed in a text is text, as in the served bundle
        )
        if not self.config.uses_token_type_ids:
            encoded.pop("token_type_ids", None)
        return encoded

    def encode_tokens(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.config.uses_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder(**kwargs).last_hidden_state

    @classmethod
    def from_encoder(cls, config: ModelConfig) -> "EncoderClassifier":
        encoder, tokenizer = load_encoder(config.encoder)
        config = dataclasses.replace(
            config, uses_token_type_ids="token_type_ids" in tokenizer.model_input_names
        )
        return cls(config, encoder, tokenizer)

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        self.encoder.config.save_pretrained(directory / ENCODER_DIR)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "EncoderClassifier":
        """Rebuild the model from a directory written by :meth:`save_pretrained`, exactly."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        directory = Path(directory)
        config = read_config(directory)
        model_cls = ARCHITECTURES[config.architecture]
        if cls is not EncoderClassifier and model_cls is not cls:
            raise ConfigError(f"{directory} holds a {config.architecture!r} model, not {cls.architecture!r}")
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory / ENCODER_DIR))
        tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        model = model_cls(config, encoder, tokenizer)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        return model.eval()


class ProtoLM(EncoderClassifier):
    """Encoder -> token attention -> pooled S -> prototype similarities -> linear -> logits."""

    architecture = "protolm"

    def __init__(self, config: ModelConfig, encoder: nn.Module, tokenizer):
        super().__init__(config, encoder, tokenizer)
        self.attention = TokenAttention(self.hidden_size)
        self.prototypes = PrototypeLayer(
            config.num_classes, config.prototypes_per_class, self.hidden_size, config.similarity, config.epsilon
        )
        self.classifier = nn.Linear(config.num_prototypes, config.num_classes, bias=False)
        self.reset_classifier()

    @property
    def prototype_class(self) -> torch.Tensor:
        return self.prototypes.prototype_class

    def reset_classifier(self, scale: float = 1.0) -> None:
        """ProtoPNet's start, +1 from a class's own prototypes and -0.5 from the others', times
        ``scale`` (training's default is 0.1: the logits of ProtoPNet's start are sums over a
        class's prototypes, tens of units, and cross-entropy is saturated from the first step)."""
        own = nn.functional.one_hot(self.prototype_class, self.config.num_classes).T.to(self.classifier.weight)
        with torch.no_grad():
            self.classifier.weight.copy_(scale * (own - 0.5 * (1 - own)))

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> ClassifierOutput:
        hidden = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        attention = self.attention(hidden, attention_mask)
        pooled = torch.bmm(attention.unsqueeze(1), hidden).squeeze(1)
        distances, similarities = self.prototypes(pooled)
        return ClassifierOutput(
            logits=self.classifier(similarities),
            pooled=pooled,
            token_attention=attention,
            similarities=similarities,
            distances=distances,
        )


class BaselineClassifier(EncoderClassifier):
    """The like-for-like baseline: the same encoder, mean-pooled, dropout, one linear layer."""

    architecture = "baseline"

    def __init__(self, config: ModelConfig, encoder: nn.Module, tokenizer):
        super().__init__(config, encoder, tokenizer)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.hidden_size, config.num_classes)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> ClassifierOutput:
        hidden = self.encode_tokens(input_ids, attention_mask, token_type_ids)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return ClassifierOutput(logits=self.classifier(self.dropout(pooled)), pooled=pooled)


ARCHITECTURES: dict[str, type[EncoderClassifier]] = {cls.architecture: cls for cls in (ProtoLM, BaselineClassifier)}


def read_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} is not a protolm model directory (no {CONFIG_FILE})")
    values = json.loads(path.read_text())
    if values.get("format_version") != MODEL_FORMAT_VERSION:
        raise ConfigError(
            f"{path}: model format version {values.get('format_version')!r}, this protolm reads {MODEL_FORMAT_VERSION}"
        )
    if values.get("architecture") not in ARCHITECTURES:
        raise ConfigError(f"{path}: unknown architecture {values.get('architecture')!r}")
    return ModelConfig(**values)


def load_model(directory: str | Path) -> EncoderClassifier:
    """Load whichever architecture the directory holds."""
    return EncoderClassifier.from_pretrained(directory)
