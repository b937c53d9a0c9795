"""Training with Hugging Face ``Trainer``: progress bars, per-epoch validation, best-checkpoint
selection, early stopping, seeding, mixed precision and ``torchrun`` multi-GPU come from it;
this module adds proto-lm's loss, two learning rates and the data plumbing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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


class TokenizedDataset(Dataset):
    """Examples tokenised once, unpadded: each item holds its ``input_ids`` (whose lengths the
    length-grouped sampler reads), the other encoder inputs and its label."""

    def __init__(self, model: EncoderClassifier, data: TextClassificationData):
        encoded = model.tokenize(list(data.texts), list(data.text_pairs) if data.is_pair else None, pad=False)
        self.columns = {name: encoded[name] for name in encoded}
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {**{name: values[index] for name, values in self.columns.items()}, "labels": int(self.labels[index])}


class LengthBucketSampler(Sampler[int]):
    """Batches of similar length in random order: a random permutation is cut into windows of
    ``window_batches`` batches, each window is sorted by length and cut into batches, and the
    batches of the whole epoch are shuffled. Batches pad little, and unlike Hugging Face's
    length-grouped sampler (longest to shortest within each window) their lengths do not
    drift along the epoch: that drift cost 4 points on SST-2 at 2,000 sentences.

    The order depends on the seed and the epoch only (the Trainer calls ``set_epoch``), so a
    run resumed mid-epoch skips exactly the batches it had trained."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window_batches: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size = batch_size
        self.window = batch_size * window_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            window = window[torch.argsort(self.lengths[window], stable=True)]
            batches.extend(window.split(self.batch_size))
        for position in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[position].tolist()


class PaddingCollator:
    """Pads a batch to its longest member rather than to ``max_length``."""

    def __init__(self, model: EncoderClassifier):
        self.tokenizer = model.tokenizer

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        batch = dict(self.tokenizer.pad([{k: v for k, v in e.items() if k != "labels"} for e in examples], return_tensors="pt"))
        return {**batch, "labels": labels}


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

        def __init__(self, *args, objective_spec: ObjectiveSpec, head_learning_rate: float, group_by_length: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.objective_spec = objective_spec
            self.head_learning_rate = head_learning_rate
            self.group_by_length = group_by_length

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return LengthBucketSampler([len(ids) for ids in dataset.columns["input_ids"]], self.args.train_batch_size, self.args.data_seed)

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
    config: TrainConfig, train: TextClassificationData, validation: TextClassificationData, callbacks: Sequence = ()
) -> tuple[EncoderClassifier, Path, TrainingRecord]:
    """Train (resuming an interrupted run of the same settings and data), keep the best epoch,
    save the model directory; returns (model, directory, record). ``callbacks`` are extra
    Trainer callbacks. The checkpoints stay: the caller discards them when its job is done."""
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    from protolm.checkpoints import CheckpointTimer, TrainingClock, checkpoint_to_resume, checkpoints_dir, run_fingerprint

    data_config, options, optim = config.data, config.model, config.optim
    set_seed(optim.seed)
    max_length = options.max_length or default_max_length(data_source(data_config))
    name = data_config.task or Path(data_config.train_file or data_config.dataset or "data").stem
    output_dir = Path(optim.output_dir or f"runs/{options.architecture}-{name}")
    checkpoints = checkpoints_dir(output_dir)
    resume_from = checkpoint_to_resume(output_dir, run_fingerprint(config, train, validation), optim.resume)

    model = build_model(options, train, max_length)
    warn_if_too_small(train, validation, model.config.num_prototypes if isinstance(model, ProtoLM) else None)
    if isinstance(model, ProtoLM) and resume_from is None:  # a resumed run's start is in its checkpoint
        if options.prototype_init == "data":
            init_prototypes_from_data(model, train, optim.seed, optim.eval_batch_size)
        model.reset_classifier(options.classifier_scale)
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
        save_total_limit=2,  # the best epoch and the latest step (with 1, the Trainer deletes the latest at the end)
        restore_callback_states_from_checkpoint=True,
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
    callbacks = [
        *([EarlyStoppingCallback(optim.early_stopping_patience)] if optim.early_stopping_patience > 0 else []),
        CheckpointTimer(optim.checkpoint_minutes),
        TrainingClock(),
        *callbacks,
    ]
    spec = ObjectiveSpec(
        weights=LossWeights.from_options(options),
        top_k=top_k_count(options.top_k, model.config.prototypes_per_class),
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=TokenizedDataset(model, train),
        eval_dataset=TokenizedDataset(model, validation),
        data_collator=PaddingCollator(model),
        compute_metrics=accuracy_metric,
        callbacks=callbacks,
        objective_spec=spec,
        head_learning_rate=optim.head_learning_rate,
        group_by_length=optim.group_by_length,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # they print the raw log dicts
        trainer.remove_callback(noisy)
    trainer.add_callback(_tidy_progress())
    if resume_from is not None:
        log.info("resuming from %s (step %s of %d)", resume_from, resume_from.name.rsplit("-", 1)[1],
                 steps_per_epoch * optim.epochs)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    clock = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingClock))  # restored on resume
    model = trainer.model.eval()
    model.save_pretrained(output_dir)
    record = TrainingRecord(
        config=config,
        top_k=spec.top_k,
        train=DataSummary(train.name, len(train), np.bincount(train.labels, minlength=len(train.label_names)).tolist()),
        validation=DataSummary(validation.name, len(validation)),
        training_seconds=clock.total_seconds(),
        earlier_training_seconds=clock.earlier_seconds,
        train_loss=result.training_loss,
        epoch_history=[entry for entry in trainer.state.log_history if "eval_accuracy" in entry],
        best_validation_accuracy=trainer.state.best_metric,
    )
    return model, output_dir, record
