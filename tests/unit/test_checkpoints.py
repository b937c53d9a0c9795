"""Resumable training: a run interrupted mid-epoch, started again, ends with the very weights
of a run that was never interrupted (tiny encoder, in seconds)."""

import json
import logging

import pytest
import torch
from transformers import TrainerCallback

from protolm.checkpoints import RUN_FILE, checkpoints_dir
from protolm.config import DataConfig, ModelOptions, OptimConfig, TrainConfig
from protolm.training import load_train_validation, train_model
from tests.conftest import write_tiny_csvs

STEPS_PER_EPOCH = 12  # 96 rows in batches of 8


class Interrupted(Exception):
    pass


class InterruptAfterSaving(TrainerCallback):
    """Stands for a killed process: raises once the checkpoint of ``step`` is on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"interrupted after step {self.step}")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_csvs(tmp_path_factory.mktemp("resume-data"), train_rows=96, validation_rows=24)


def _config(files, encoder, output_dir, group_by_length=False, learning_rate=5e-5, every_step=True) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(train_file=str(files["train"]), validation_file=str(files["validation"])),
        model=ModelOptions(encoder=str(encoder), num_prototypes=4, max_length=32),
        # every_step: a checkpoint after every step, else at each epoch's end; no early stopping
        optim=OptimConfig(output_dir=str(output_dir), epochs=2, batch_size=8, learning_rate=learning_rate,
                          checkpoint_minutes=1e-9 if every_step else 0, early_stopping_patience=0,
                          group_by_length=group_by_length),
    )


def _last_step_weights(output_dir) -> dict:
    """The weights after the last step (the model directory holds the best epoch's)."""
    from safetensors.torch import load_file

    return load_file(checkpoints_dir(output_dir) / f"checkpoint-{2 * STEPS_PER_EPOCH}" / "model.safetensors")


def _train(config, callbacks=()):
    train, validation = load_train_validation(config.data, config.optim.seed)
    return train_model(config, train, validation, callbacks)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tiny_files, tiny_encoder_dir, tmp_path, group_by_length):
    _train(_config(tiny_files, tiny_encoder_dir, tmp_path / "reference", group_by_length, every_step=False))
    kept = sorted(p.name for p in checkpoints_dir(tmp_path / "reference").glob("checkpoint-*"))
    assert kept == [f"checkpoint-{STEPS_PER_EPOCH}", f"checkpoint-{2 * STEPS_PER_EPOCH}"]  # each epoch's end only

    config = _config(tiny_files, tiny_encoder_dir, tmp_path / "resumed", group_by_length)
    stop_at = STEPS_PER_EPOCH + 5  # in the middle of the second epoch
    with pytest.raises(Interrupted):
        _train(config, [InterruptAfterSaving(stop_at)])
    assert (checkpoints_dir(tmp_path / "resumed") / f"checkpoint-{stop_at}" / "optimizer.pt").is_file()
    cut_off = checkpoints_dir(tmp_path / "resumed") / f"checkpoint-{stop_at + 1}"  # killed while being written
    cut_off.mkdir()
    (cut_off / "model.safetensors").write_bytes(b"")
    _, _, record = _train(config)

    assert not cut_off.exists() or (cut_off / "trainer_state.json").is_file()  # set aside, then written afresh
    reference, resumed = _last_step_weights(tmp_path / "reference"), _last_step_weights(tmp_path / "resumed")
    assert reference.keys() == resumed.keys()
    for name, weights in reference.items():
        assert torch.allclose(resumed[name], weights, atol=1e-6), name
    assert [entry["epoch"] for entry in record.epoch_history] == [1.0, 2.0]  # the first epoch's validation came back
    assert 0 < record.earlier_training_seconds < record.training_seconds


def test_other_settings_or_resume_false_start_afresh(tiny_files, tiny_encoder_dir, tmp_path, caplog):
    output_dir = tmp_path / "model"
    with pytest.raises(Interrupted):
        _train(_config(tiny_files, tiny_encoder_dir, output_dir), [InterruptAfterSaving(3)])

    changed = _config(tiny_files, tiny_encoder_dir, output_dir, learning_rate=1e-4)
    with caplog.at_level(logging.WARNING, logger="protolm.checkpoints"), pytest.raises(Interrupted):
        _train(changed, [InterruptAfterSaving(2)])  # step 2 comes before 3: only a fresh start reaches it
    assert "other settings or data" in caplog.text
    assert json.loads((checkpoints_dir(output_dir) / RUN_FILE).read_text())["settings"]["optim"]["learning_rate"] == 1e-4

    caplog.clear()
    afresh = TrainConfig(changed.data, changed.model, OptimConfig(**{**changed.optim.__dict__, "resume": False}))
    with caplog.at_level(logging.WARNING, logger="protolm.checkpoints"):
        _, _, record = _train(afresh)
    assert "--resume is false" in caplog.text and record.earlier_training_seconds == 0


def test_options_acting_after_training_do_not_stop_a_resume(tiny_files, tiny_encoder_dir, tmp_path):
    """Projection and push run after training, so changing them keeps the checkpoints, also
    those of a version whose fingerprint still held them."""
    output_dir = tmp_path / "model"
    config = _config(tiny_files, tiny_encoder_dir, output_dir, every_step=False)
    with pytest.raises(Interrupted):
        _train(config, [InterruptAfterSaving(STEPS_PER_EPOCH)])
    run_file = checkpoints_dir(output_dir) / RUN_FILE
    recorded = json.loads(run_file.read_text())
    recorded["settings"]["optim"].update(project=True, push=True, push_epochs=0)  # the earlier format
    run_file.write_text(json.dumps(recorded))

    pushed_otherwise = TrainConfig(config.data, config.model, OptimConfig(**{**config.optim.__dict__, "push_refit": True, "push_epochs": 3}))
    _, _, record = _train(pushed_otherwise)
    assert record.earlier_training_seconds > 0  # it went on from the first epoch's checkpoint
