"""How each benchmark task is split into training, checkpoint-selection and test data.

The standard protocol trains on the task's training split and tests on its labelled test
split (SST-5, IMDb) or, for GLUE, on its dev ("validation") split, as the paper does. QNLI and
MNLI have no training split in the shared data directory; where the hub cannot supply one,
a labelled stand-in is used instead, and every result records which protocol it ran:

* ``mnli``: train on validation_matched, test on validation_mismatched (a cross-genre test);
* ``qnli``: a seeded 80/20 split of the validation set (the same split for every seed).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from protolm.data import DataSource, TextClassificationData, load_split
from core.errors import DataError
from protolm.pipeline import Splits
from protolm.benchmark.suites import TaskBudget

log = logging.getLogger(__name__)

STANDARD = "standard"
STAND_IN = {
    "mnli": "stand-in: train validation_matched, test validation_mismatched",
    "qnli": "stand-in: seeded 80/20 split of validation",
}
TEST_SPLITS = {"sst5": "test", "imdb": "test", "mnli": "validation_matched"}  # default: "validation"
QNLI_SPLIT_SEED = 0
TEST_SEED = 0  # the test subset is the same for every seed, so seeds differ only in training
SELECTION_SAMPLES = 200  # checkpoint selection runs every epoch; a subset keeps it cheap


@dataclasses.dataclass(frozen=True)
class TaskData:
    splits: Splits
    protocol: str
    train_available: int  # size of the training data the subset was drawn from
    test_available: int


def _named(data: TextClassificationData, name: str) -> TextClassificationData:
    return dataclasses.replace(data, name=name)


def _stand_in(task: str, source: DataSource) -> tuple[TextClassificationData, TextClassificationData]:
    if task == "mnli":
        return load_split(source, "validation_matched"), load_split(source, "validation_mismatched")
    train, test = load_split(source, "validation").split(0.2, QNLI_SPLIT_SEED)
    return _named(train, "qnli:validation[80%]"), _named(test, "qnli:validation[20%]")


@functools.lru_cache(maxsize=None)  # a suite loads each task many times; the hub is asked once
def _full_splits(task: str, data_dir: str | None) -> tuple[TextClassificationData, TextClassificationData, TextClassificationData, str]:
    """(train, selection, test, protocol) before any subsetting."""
    source = DataSource(task=task, data_dir=data_dir)
    protocol = STANDARD
    try:
        train = load_split(source, "train")
        test = load_split(source, TEST_SPLITS.get(task, "validation"), label_names=train.label_names)
    except DataError as exc:
        if task not in STAND_IN:
            raise
        log.warning("%s: no standard training split (%s); using the %s protocol", task, exc, STAND_IN[task])
        protocol = STAND_IN[task]
        train, test = _stand_in(task, source)
    selection = load_split(source, "validation", label_names=train.label_names) if task == "sst5" else test
    return train, selection, test, protocol


def load_task_data(task: str, budget: TaskBudget, seed: int, data_dir: str | None = None) -> TaskData:
    train, selection, test, protocol = _full_splits(task, data_dir)
    splits = Splits(
        train=train.sample(budget.train_samples, seed),
        validation=selection.sample(SELECTION_SAMPLES, seed),
        test=test.sample(budget.test_samples, TEST_SEED),
    )
    return TaskData(splits, protocol, len(train), len(test))

