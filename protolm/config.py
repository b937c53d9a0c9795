"""Training configuration: every hyperparameter is a flag and a ``PROTOLM_*`` variable."""

from __future__ import annotations

from dataclasses import dataclass

from core.options import option
from core.similarity import DEFAULT_SIMILARITY, METRICS, SIMILARITIES
from protolm.encoders import DEFAULT_ENCODER


@dataclass(frozen=True)
class DataConfig:
    task: str | None = option(None, "named task: sst2, sst5, rte, wnli, mrpc, qnli, mnli, imdb")
    dataset: str | None = option(None, "a Hugging Face hub dataset, NAME or NAME:CONFIG (instead of --task)")
    train_file: str | None = option(None, "your own training file: .csv, .tsv, .jsonl, .json or .parquet (optionally .gz)")
    validation_file: str | None = option(None, "your own validation file; without one, --validation-fraction of the training file is held out")
    text_column: str = option("text", "column holding the text (files and hub datasets)")
    text_pair_column: str | None = option(None, "column holding the second text of a pair (files and hub datasets)")
    label_column: str = option("label", "column holding the label: class names or integer ids")
    data_dir: str | None = option(None, "directory with <task>/<split>.jsonl.gz files; named tasks fall back to the hub when a split is not there")
    validation_fraction: float = option(0.1, "share of the training data held out when there is no validation split")
    max_train_samples: int | None = option(None, "train on a seeded random subset of this many examples")
    max_eval_samples: int | None = option(None, "evaluate on a seeded random subset of this many examples")


@dataclass(frozen=True)
class ModelOptions:
    architecture: str = option("protolm", "protolm, or baseline (mean-pooled encoder + linear head, for comparison)", choices=("protolm", "baseline"))
    encoder: str = option(DEFAULT_ENCODER, "packaged name (minilm), a local model directory, or a Hugging Face hub name such as roberta-base")
    max_length: int | None = option(None, "maximum tokens per input; default: the task's (50 for SST, 128 for pairs, 256 for IMDb)")
    num_prototypes: int = option(200, "total prototypes N, split evenly over the classes (at least one each)")
    top_k: float = option(0.5, "K for cohesion/separation: a count, or a fraction (< 1) of the prototypes per class")
    similarity: str = option(DEFAULT_SIMILARITY, "prototype similarity: " + "; ".join(m.description for m in METRICS.values()), choices=SIMILARITIES)
    epsilon: float = option(1e-4, "epsilon of the inverse and log similarities")
    prototype_init: str = option("data", "data: start prototypes at encodings of random training examples of their class; random: uniform [0, 1)", choices=("data", "random"))
    classifier_scale: float = option(0.1, "the last layer starts at ProtoPNet's +1 from a class's own prototypes and -0.5 from the others', times this (1: ProtoPNet's start, where the logits are sums over a class's prototypes and cross-entropy is saturated from the first step)")
    ce_weight: float = option(0.5, "lambda0: weight of cross-entropy")
    cohesion_weight: float = option(0.25, "lambda1: weight of the cohesion term")
    separation_weight: float = option(0.25, "lambda2: weight of the separation term")


@dataclass(frozen=True)
class OptimConfig:
    output_dir: str | None = option(None, "where the model directory goes; default runs/<architecture>-<task>")
    epochs: float = option(3.0, "training epochs")
    batch_size: int = option(16, "training batch size per device")
    eval_batch_size: int = option(128, "evaluation batch size per device")
    learning_rate: float = option(5e-5, "learning rate of the encoder")
    head_learning_rate: float = option(1e-3, "learning rate of the layers on top: attention, prototypes, classifier")
    weight_decay: float = option(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = option(0.06, "share of steps with a linear learning-rate warm-up")
    early_stopping_patience: int = option(2, "stop after this many epochs without a better validation accuracy (0: never)")
    seed: int = option(42, "seed for initialisation, sampling and data order")
    precision: str = option("fp32", "fp32, bf16 or fp16 (mixed precision needs a GPU for fp16)", choices=("fp32", "bf16", "fp16"))
    project: bool = option(True, "after training, project every prototype onto its nearest training example")
    push: bool = option(True, "ProtoPNet push: every prototype becomes its exemplar's encoding (with --push-epochs > 0 the last layer is then retrained on the fixed similarities; false: keep the learned vectors)")
    push_refit: bool = option(False, "after push, refit the last layer (least squares, pulled toward the trained weights) so that the pushed model's logits on the training examples that are not exemplars match the trained model's: push then neither costs nor gains accuracy (false: keep the trained last layer)")
    push_epochs: int = option(0, "epochs of last-layer retraining on the labels after push (and the refit), on the training examples that are not exemplars (0: none; ProtoPNet retrains)")
    group_by_length: bool = option(False, "batches of training examples of similar length, in random order: 1.7x the steps per second on SST-2, but 0.4 points lower on average over 3 seeds at 2,000 sentences (false: uniformly random batches)")
    dataloader_workers: int = option(0, "data-loading worker processes")
    checkpoint_minutes: float = option(10.0, "also save a resumable checkpoint every this many minutes of training (0: only at the end of each epoch)")
    resume: bool = option(True, "when --output-dir holds checkpoints of an interrupted run with the same settings and data, go on from the latest (false: start afresh)")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelOptions
    optim: OptimConfig


@dataclass(frozen=True)
class EvalConfig:
    split: str | None = option(None, "split to evaluate; default: the source's validation split")
    batch_size: int = option(128, "evaluation batch size")
    faithfulness: bool = option(True, "also measure comprehensiveness and sufficiency (about 20 extra passes)")
    seed: int = option(0, "seed of the random ranking and of --max-eval-samples")
    faithfulness_samples: int | None = option(200, "measure faithfulness on a seeded subset of this many evaluation examples ('none': all of them)")
