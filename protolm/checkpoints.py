"""Resumable training: a full checkpoint (weights, optimizer, scheduler, random state) every
few minutes besides each epoch's, and a run started again with the same output directory,
settings and data picks up from the latest one instead of starting over.

The checkpoints stay until the whole job (projection, push, evaluation) has finished, so a
job killed after training resumes at the end of training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import sort_checkpoints

from protolm.config import TrainConfig
from protolm.data import TextClassificationData

log = logging.getLogger(__name__)
CHECKPOINTS_DIR = "checkpoints"  # inside the model directory
RUN_FILE = "run.json"  # which run the checkpoints belong to: its settings and a digest of its data
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it after a checkpoint's other files
# Options that do not change what training computes (the last four act after it), so a run
# may resume under other values.
NOT_IN_FINGERPRINT = ("output_dir", "checkpoint_minutes", "resume", "dataloader_workers", "eval_batch_size",
                      "project", "push", "push_refit", "push_epochs")


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS_DIR


def _training_settings(settings: dict) -> dict:
    """``settings`` (a TrainConfig as a dict) without the options outside the fingerprint; also
    applied to a recorded fingerprint, which may come from a version that had more of them."""
    return {**settings, "optim": {k: v for k, v in settings["optim"].items() if k not in NOT_IN_FINGERPRINT}}


def run_fingerprint(config: TrainConfig, train: TextClassificationData, validation: TextClassificationData) -> dict:
    settings = _training_settings(dataclasses.asdict(config))
    digest = hashlib.sha256()
    for data in (train, validation):
        for texts in (data.texts, data.text_pairs if data.is_pair else ()):
            for text in texts:
                digest.update(text.encode() + b"\0")
        digest.update(np.asarray(data.labels, dtype=np.int64).tobytes())
        digest.update(json.dumps(list(data.label_names)).encode())
    return json.loads(json.dumps({"settings": settings, "data": digest.hexdigest()}))


def _complete_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints written to the end, oldest first; one cut off while being written goes."""
    complete = []
    for path in map(Path, sort_checkpoints(str(directory))):
        if (path / COMPLETE_MARKER).is_file():
            complete.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return complete


def checkpoint_to_resume(output_dir: Path, fingerprint: dict, resume: bool) -> Path | None:
    """The latest complete checkpoint of this same run, when resuming; otherwise None, with
    the directory cleared of other runs' checkpoints and claimed for this one."""
    directory = checkpoints_dir(output_dir)
    if directory.is_dir():
        try:
            recorded = json.loads((directory / RUN_FILE).read_text())
            same_run = {**recorded, "settings": _training_settings(recorded["settings"])} == fingerprint
        except (OSError, ValueError, KeyError, TypeError):
            same_run = False
        complete = _complete_checkpoints(directory)
        if resume and same_run and complete:
            return complete[-1]
        if complete:
            why = "--resume is false" if not resume else "they were written by a run with other settings or data"
            log.warning("discarding the checkpoints in %s: %s", directory, why)
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / RUN_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    return None


def discard_checkpoints(output_dir: Path) -> None:
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


class CheckpointTimer(TrainerCallback):
    """Asks for a checkpoint every ``minutes`` of training; 0: only the Trainer's own, at the
    end of each epoch."""

    def __init__(self, minutes: float):
        self.minutes = minutes
        self._last_save = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.minutes > 0 and time.monotonic() - self._last_save >= 60 * self.minutes:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self._last_save = time.monotonic()


class TrainingClock(TrainerCallback, ExportableState):
    """Training seconds across resumed calls: the count is saved in each checkpoint's trainer
    state, and the Trainer restores it with the checkpoint."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds  # training time up to ``self._since``
        self.earlier_seconds = 0.0  # of it, the time trained by earlier, interrupted calls
        self._since = time.monotonic()

    def total_seconds(self) -> float:
        return self.seconds + time.monotonic() - self._since

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": self.total_seconds()}}

    def on_train_begin(self, args, state, control, **kwargs):
        self.earlier_seconds = self.seconds
        self._since = time.monotonic()
