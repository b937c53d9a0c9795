"""Shared fixtures: tiny random-weight encoders for fast tests, the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("PROTOLM_DATA_DIR", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = data_dir()
    if not (path / "sst2").is_dir():
        pytest.skip(f"benchmark data not found at {path} (set PROTOLM_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the real MiniLM tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from protolm.encoders import resolve_encoder_path

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def make_model(tiny_encoder_dir):
    """Factory for tiny ProtoLM / baseline models on the tiny encoder."""
    import torch

    from protolm.model import ARCHITECTURES, ModelConfig

    def build(architecture="protolm", label_names=("negative", "positive"), is_pair=False, per_class=3, similarity="inverse", seed=0):
        torch.manual_seed(seed)
        config = ModelConfig(
            architecture=architecture,
            label_names=list(label_names),
            encoder=str(tiny_encoder_dir),
            is_pair=is_pair,
            max_length=64,
            prototypes_per_class=per_class,
            similarity=similarity,
        )
        return ARCHITECTURES[architecture].from_encoder(config).eval()

    return build


def announce(request, message: str) -> None:
    """A line on the terminal, through pytest's output capture: a long fixture says what it does."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write(message + "\n", flush=True)  # flushed: stdout may be a file or a pipe


@pytest.fixture(scope="session")
def trained_sst2_model(shared_data_dir, tmp_path_factory, request):
    """The issue's acceptance run, trained once per test session and shared by the slow tests:
    proto-lm on 2,000 SST-2 training examples, 1 epoch, packaged MiniLM, default settings.

    Returns (model directory, evaluation report)."""
    from protolm.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, TrainConfig
    from protolm.pipeline import run_training

    announce(request, "trained_sst2_model: training proto-lm on 2,000 SST-2 sentences, 1 epoch, for the slow tests (about 3 min on 2 cores)")
    output_dir = tmp_path_factory.mktemp("protolm-sst2")
    config = TrainConfig(
        data=DataConfig(task="sst2", data_dir=str(shared_data_dir), max_train_samples=2000),
        model=ModelOptions(),
        optim=OptimConfig(output_dir=str(output_dir), epochs=1),
    )
    _, directory, report = run_training(config, EvalConfig())
    return directory, report


TINY_POSITIVE = ["good", "great fun", "fine acting", "lovely", "superb work", "a warm and witty film", "beautifully shot"]
TINY_NEGATIVE = ["bad", "awful mess", "boring plot", "terrible", "weak", "a dull and lifeless film", "badly written"]


def write_tiny_csvs(directory: Path, train_rows: int, validation_rows: int) -> dict[str, Path]:
    """train.csv and validation.csv (text, label) of alternating negative / positive phrases,
    each row numbered so no two texts are equal; returns {split: path}."""
    import csv

    files = {}
    for split, rows in (("train", train_rows), ("validation", validation_rows)):
        files[split] = directory / f"{split}.csv"
        with open(files[split], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(rows):
                words = TINY_POSITIVE if i % 2 else TINY_NEGATIVE
                writer.writerow([f"{words[(i // 2) % len(words)]} number {i}", "positive" if i % 2 else "negative"])
    return files


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_encoder_dir, tmp_path_factory) -> Path:
    """A complete model directory (training.json, exemplars.json) in seconds: proto-lm on the
    tiny encoder, trained by `run_training` for one epoch on a 60-row CSV with a 30-row
    validation CSV."""
    from protolm.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, TrainConfig
    from protolm.pipeline import run_training

    root = tmp_path_factory.mktemp("tiny-model")
    files = write_tiny_csvs(root, train_rows=60, validation_rows=30)
    config = TrainConfig(
        data=DataConfig(train_file=str(files["train"]), validation_file=str(files["validation"])),
        model=ModelOptions(encoder=str(tiny_encoder_dir), num_prototypes=6, max_length=32),
        optim=OptimConfig(output_dir=str(root / "model"), epochs=1, batch_size=16),
    )
    _, directory, _ = run_training(config, EvalConfig(faithfulness=False))
    return directory


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """`tiny_model_dir` exported with every variant and an exact example index."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    return run_export(tiny_model_dir, tmp_path_factory.mktemp("tiny-bundle") / "bundle", ExportConfig(progress=False))


@pytest.fixture(scope="session")
def exported_sst2_bundle(trained_sst2_model, tmp_path_factory, request) -> Path:
    """`trained_sst2_model` exported once per session with every variant (a minute on a CPU)."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    announce(request, "exported_sst2_bundle: exporting that model with every variant (about 1 min)")
    model_dir, _ = trained_sst2_model
    return run_export(model_dir, tmp_path_factory.mktemp("protolm-sst2-bundle") / "bundle", ExportConfig(progress=False))


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    """A CA, and a server and a client certificate it signed (openssl, 1-day validity)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=protolm-test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", f"{name}.pem")
    return directory
