"""Training with Hugging Face ``Trainer``: progress bars, per-epoch validation, best-checkpoint
selection, early stopping, seeding, mixed precision and ``torchrun`` multi-GPU come from it;
this module adds proto-lm's loss, two learning rates and the data plumbing."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from protolm.config import DataConfig, ModelOptions, TrainConfig
from protolm.data import DataSource, TextClassificationData, default_max_length, load_split, validation_split_name
from core.errors import ConfigError, DataError
from protolm.inference import predict
from protolm.losses import LossWeights, protolm_loss, top_k_count
from protolm.training_record import DataSummary, TrainingRecord
from protolm.model import ARCHITECTURES, EncoderClassifier, ModelConfig, ProtoLM, prototypes_per_class

log = logging.getLogger(__name__)
MIN_VALIDATION_EXAMPLES = 50


def data_source(config: DataConfig) -> DataSource:
    files = tuple(
        (split, path)
        for split, path in (("train", config.train_file), ("validation", config.validation_file))
        if path is not None
    )
    if files and not config.train_file:
        raise ConfigError("--validation-file needs --train-file")
    return DataSource(
        task=config.task,
        dataset=config.dataset,
        files=files,
        text_column=config.text_column,
        text_pair_column=config.text_pair_column,
        label_column=config.label_column,
        data_dir=config.data_dir,
    )


def load_train_validation(config: DataConfig, seed: int) -> tuple[TextClassificationData, TextClassificationData]:
    """The training split and a validation split (held out from training when there is none)."""
    source = data_source(config)
    train = load_split(source, "train")
    try:
        validation = load_split(source, validation_split_name(source), label_names=train.label_names)
    except DataError:
        if source.task is not None or config.validation_file is not None:
            raise
        log.warning("no validation split; holding out %.0f%% of the training data", 100 * config.validation_fraction)
        train, validation = train.split(config.validation_fraction, seed)
    if len(train) == 0 or len(validation) == 0:
        raise DataError(f"{source.describe()}: empty training or validation split")
    return train.sample(config.max_train_samples, seed), validation.sample(config.max_eval_samples, seed)


class ExampleDataset(Dataset):
    """Index access to examples; tokenisation happens per batch in :class:`BatchCollator`."""

    def __init__(self, data: TextClassificationData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        pair = self.data.text_pairs[index] if self.data.is_pair else None
        return {"text": self.data.texts[index], "text_pair": pair, "label": int(self.data.labels[index])}


class BatchCollator:
    """Tokenises a batch, padded to its longest member rather than to ``max_length``."""

    def __init__(self, model: EncoderClassifier):
        self.model = model

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [e["text_pair"] for e in examples] if self.model.config.is_pair else None
        batch = dict(self.model.tokenize([e["text"] for e in examples], pairs))
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return batch


@dataclass(frozen=True)
class ObjectiveSpec:
    weights: LossWeights
    top_k: int


def objective(model: EncoderClassifier, outputs, labels: torch.Tensor, spec: ObjectiveSpec) -> dict[str, torch.Tensor]:
    if isinstance(model, ProtoLM):
        return protolm_loss(outputs.logits, outputs.distances, labels, model.prototype_class, spec.top_k, spec.weights)
    return {"loss": torch.nn.functional.cross_entropy(outputs.logits, labels)}


def build_model(options: ModelOptions, train: TextClassificationData, max_length: int) -> EncoderClassifier:
    config = ModelConfig(
        architecture=options.architecture,
        label_names=list(train.label_names),
        encoder=options.encoder,
        is_pair=train.is_pair,
        max_length=max_length,
        prototypes_per_class=prototypes_per_class(options.num_prototypes, len(train.label_names)),
        similarity=options.similarity,
        epsilon=options.epsilon,
    )
    return ARCHITECTURES[options.architecture].from_encoder(config)


def init_prototypes_from_data(model: ProtoLM, train: TextClassificationData, seed: int, batch_size: int) -> None:
    """Start each prototype at the encoding of a random training example of its class.

    The encoder's pooled vectors live far from uniform-random points; starting on the data
    manifold lets the first epoch refine prototypes instead of spending it moving them there.
    """
    rng = np.random.default_rng(seed)
    picks = []
    for class_id, count in zip(*np.unique(model.prototype_class.cpu().numpy(), return_counts=True)):
        members = np.flatnonzero(train.labels == class_id)
        if len(members) == 0:
            raise DataError(f"{train.name}: no training example of class {train.label_names[class_id]!r}")
        picks.append(rng.choice(members, size=count, replace=len(members) < count))
    pooled = predict(model, train.subset(np.concatenate(picks)), batch_size, progress=False).pooled
    with torch.no_grad():
        model.prototypes.vectors.copy_(torch.from_numpy(pooled))


def _tidy_progress():
    """A Trainer callback: one labelled bar for training (the loss on it) and one for each
    validation pass, a one-line validation result per epoch, the raw log dicts at DEBUG."""
    from transformers.trainer_callback import ProgressCallback

    class TidyProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description("training")

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            fresh = self.prediction_bar is None
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
            if fresh and self.prediction_bar is not None:
                self.prediction_bar.set_description("validating")
                self.prediction_bar.leave = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            log.debug("trainer: %s", logs)
            if self.training_bar is not None and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)
            if "eval_accuracy" in logs:
                log.info("epoch %g: validation accuracy %.4f", float(logs.get("epoch", 0)), float(logs["eval_accuracy"]))

    return TidyProgress()


def warn_if_too_small(train: TextClassificationData, validation: TextClassificationData, num_prototypes: int | None) -> None:
    """Warnings (not errors) for data too small for the configuration."""
    warnings = []
    if num_prototypes is not None and len(train) < num_prototypes:
        warnings.append(f"{len(train)} training examples for {num_prototypes} prototypes: prototypes will share exemplars; "
                        f"lower --num-prototypes or add data")
    if len(validation) < MIN_VALIDATION_EXAMPLES:
        warnings.append(f"a validation set of {len(validation)} examples (under {MIN_VALIDATION_EXAMPLES}): its accuracy, "
                        f"and the choice of the best epoch, say little")
    for warning in warnings:
        log.warning("%s", warning)


def _trainer_class():
    from transformers import Trainer

    class ProtoLMTrainer(Trainer):
        """Trainer with proto-lm's loss and separate encoder / head learning rates."""

        def __init__(self, *args, objective_spec: ObjectiveSpec, head_learning_rate: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.objective_spec = objective_spec
            self.head_learning_rate = head_learning_rate

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = objective(model, outputs, labels, self.objective_spec)["loss"]
            return (loss, outputs) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(dict(inputs))
            labels = inputs.pop("labels")
            with torch.no_grad():
                outputs = model(**inputs)
                loss = objective(model, outputs, labels, self.objective_spec)["loss"]
            return loss.detach(), outputs.logits.detach(), labels

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                model = model or self.model
                groups: dict[tuple[bool, bool], list] = {}
                for name, parameter in model.named_parameters():
                    if not parameter.requires_grad:
                        continue
                    is_head = not name.startswith("encoder.")
                    decays = parameter.ndim >= 2 and name != "prototypes.vectors"
                    groups.setdefault((is_head, decays), []).append(parameter)
                self.optimizer = torch.optim.AdamW(
                    [
                        {
                            "params": params,
                            "lr": self.head_learning_rate if is_head else self.args.learning_rate,
                            "weight_decay": self.args.weight_decay if decays else 0.0,
                        }
                        for (is_head, decays), params in groups.items()
                    ]
                )
            return self.optimizer

    return ProtoLMTrainer


def accuracy_metric(eval_prediction) -> dict[str, float]:
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def train_model(
    config: TrainConfig, train: TextClassificationData, validation: TextClassificationData
) -> tuple[EncoderClassifier, Path, dict]:
    """Train, keep the best epoch, save the model directory; returns (model, directory, summary)."""
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    data_config, options, optim = config.data, config.model, config.optim
    set_seed(optim.seed)
    max_length = options.max_length or default_max_length(data_source(data_config))
    model = build_model(options, train, max_length)
    warn_if_too_small(train, validation, model.config.num_prototypes if isinstance(model, ProtoLM) else None)
    if isinstance(model, ProtoLM) and options.prototype_init == "data":
        init_prototypes_from_data(model, train, optim.seed, optim.eval_batch_size)

    name = data_config.task or Path(data_config.train_file or data_config.dataset or "data").stem
    output_dir = Path(optim.output_dir or f"runs/{options.architecture}-{name}")
    checkpoints = output_dir / "checkpoints"
    steps_per_epoch = max(1, -(-len(train) // optim.batch_size))
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=optim.epochs,
        per_device_train_batch_size=optim.batch_size,
        per_device_eval_batch_size=optim.eval_batch_size,
        learning_rate=optim.learning_rate,
        weight_decay=optim.weight_decay,
        warmup_steps=int(optim.warmup_ratio * steps_per_epoch * optim.epochs),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=max(1, min(50, steps_per_epoch // 4)),
        seed=optim.seed,
        data_seed=optim.seed,
        bf16=optim.precision == "bf16",
        fp16=optim.precision == "fp16",
        remove_unused_columns=False,
        label_names=["labels"],
        report_to="none",
        dataloader_num_workers=optim.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    callbacks = [EarlyStoppingCallback(optim.early_stopping_patience)] if optim.early_stopping_patience > 0 else []
    spec = ObjectiveSpec(
        weights=LossWeights.from_options(options),
        top_k=top_k_count(options.top_k, model.config.prototypes_per_class),
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=ExampleDataset(train),
        eval_dataset=ExampleDataset(validation),
        data_collator=BatchCollator(model),
        compute_metrics=accuracy_metric,
        callbacks=callbacks,
        objective_spec=spec,
        head_learning_rate=optim.head_learning_rate,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # they print the raw log dicts
        trainer.remove_callback(noisy)
    trainer.add_callback(_tidy_progress())
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    model = trainer.model.eval()
    model.save_pretrained(output_dir)
    shutil.rmtree(checkpoints, ignore_errors=True)
    record = TrainingRecord(
        config=config,
        top_k=spec.top_k,
        train=DataSummary(train.name, len(train), np.bincount(train.labels, minlength=len(train.label_names)).tolist()),
        validation=DataSummary(validation.name, len(validation)),
        training_seconds=seconds,
        train_loss=result.training_loss,
        epoch_history=[entry for entry in trainer.state.log_history if "eval_accuracy" in entry],
        best_validation_accuracy=trainer.state.best_metric,
    )
    return model, output_dir, record
