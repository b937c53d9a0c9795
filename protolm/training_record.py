"""``training.json``: what a training run did, written by training and read by export,
evaluation and the benchmark runner through the same dataclasses. Torch-free."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from protolm.config import DataConfig, ModelOptions, OptimConfig, TrainConfig

TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class DataSummary:
    name: str
    examples: int
    label_counts: list[int] | None = None


@dataclass(frozen=True)
class TrainingRecord:
    config: TrainConfig
    top_k: int  # K of cohesion and separation, as a count
    train: DataSummary
    validation: DataSummary  # per-epoch validation
    training_seconds: float  # across resumed calls
    train_loss: float
    epoch_history: list[dict[str, Any]]
    best_validation_accuracy: float | None
    projection: dict[str, Any] | None = None  # what projection and push measured
    test: DataSummary | None = None  # the final evaluation's data
    evaluation: dict[str, Any] | None = None  # EvaluationReport.as_dict()
    earlier_training_seconds: float = 0.0  # of training_seconds, those of earlier, interrupted calls

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / TRAINING_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> "TrainingRecord":
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: no such model directory")
        path = directory / TRAINING_FILE
        if not path.is_file():
            raise ConfigError(f"{directory} has no {TRAINING_FILE}: it is not a model directory written by `protolm train`")
        try:
            raw = json.loads(path.read_text())
            config = raw["config"]
            return cls(**{
                **raw,
                "config": TrainConfig(DataConfig(**config["data"]), ModelOptions(**config["model"]), OptimConfig(**config["optim"])),
                "train": DataSummary(**raw["train"]),
                "validation": DataSummary(**raw["validation"]),
                "test": DataSummary(**raw["test"]) if raw.get("test") else None,
            })
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc
