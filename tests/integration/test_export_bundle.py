"""`protolm export` end to end on a tiny trained model, and `ServedBundle.load` / `protolm bundle verify` on what it wrote."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from cli.main import main
from core.errors import BundleError, ConfigError
from protolm.model import load_model
from protolm.projection import load_exemplars
from core.bundle import (
    EXAMPLE_INDEX_FILE,
    EXAMPLE_OFFSETS_FILE,
    EXAMPLES_FILE,
    EXEMPLARS_FILE,
    FORMAT_VERSION,
    LAST_LAYER_FILE,
    MANIFEST_FILE,
    PROTOTYPE_INDEX_FILE,
    TOKENIZER_FILE,
    VARIANT_FILES,
    IndexInfo,
    parse_manifest,
)
from protolm.training_record import TrainingRecord
from service.engine import ExampleLookup
from service.served_bundle import ServedBundle as Bundle
from core.similarity import PUSH_TOLERANCE
from tests.conftest import write_tiny_csvs
from tests.service_helpers import file_entry, reseal

BUNDLE_FILES = [TOKENIZER_FILE, *VARIANT_FILES.values(), PROTOTYPE_INDEX_FILE, EXAMPLE_INDEX_FILE, EXAMPLES_FILE, EXAMPLE_OFFSETS_FILE, EXEMPLARS_FILE, LAST_LAYER_FILE]


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def flip_byte(path, position=None):
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if position is None else position
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_describes_the_bundle(tiny_bundle, tiny_model_dir):
    manifest = Bundle.load(tiny_bundle).manifest
    training = TrainingRecord.read(tiny_model_dir)
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.labels == ("negative", "positive") and manifest.task_type == "single"
    assert manifest.max_length == 32 and manifest.architecture.num_prototypes == 6
    assert manifest.training_data == {"name": training.train.name, "examples": training.train.examples, "label_counts": training.train.label_counts}
    assert manifest.metrics["accuracy"] == training.evaluation["accuracy"]
    assert manifest.hyperparameters["learning_rate"] == training.config.optim.learning_rate
    assert sorted(manifest.files) == sorted(BUNDLE_FILES)
    for name, entry in manifest.files.items():
        assert entry.size == (tiny_bundle / name).stat().st_size
    assert {"torch", "transformers", "onnx", "onnxruntime", "faiss"} <= {k for k, v in manifest.versions.items() if v}
    assert [v.name for v in manifest.variants] == ["fp32", "optimized", "int8", "fp16"]
    for variant in manifest.variants:
        assert 0.0 <= variant.accuracy <= 1.0 and variant.servable == (variant.agreement >= 0.99)
    # the default cosine similarity: unit vectors, inner products
    assert manifest.indexes.examples == IndexInfo(file=EXAMPLE_INDEX_FILE, kind="flat", metric="cosine", count=60, recall_at_10=1.0)


def test_bundle_parts_match_the_model(tiny_bundle, tiny_model_dir):
    bundle = Bundle.load(tiny_bundle)
    model = load_model(tiny_model_dir)
    texts = ["great fun number 3", "a dull and lifeless film, badly written and far too long for its own good"]
    feeds = bundle.encode(texts)
    session = bundle.session(bundle.choose_variant("cpu", preferred="fp32"))
    logits, similarities, pooled = session.run(["logits", "prototype_similarities", "pooled"], feeds)
    with torch.no_grad():
        expected = model(**model.tokenize(texts))
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(similarities, expected.similarities.numpy(), atol=1e-4)

    vectors = model.prototypes.vectors.detach().numpy()
    _, nearest = bundle.prototype_index().search(vectors, 1)
    assert nearest[:, 0].tolist() == list(range(len(vectors)))

    store = bundle.examples()
    row = store[7]
    assert row.text == "lovely number 7" and bundle.manifest.labels[row.label] == "positive" and row.split == "train.csv"
    example_feeds = bundle.encode([row.text])
    lookup = ExampleLookup(bundle.example_index(), store.__getitem__, bundle.manifest.metric, "examples")
    ((nearest_row, distance),) = lookup.search(session.run(["pooled"], example_feeds)[0], 1)[0]
    assert nearest_row == row and distance == pytest.approx(0.0, abs=1e-5)

    # one exemplar type from projection to the bundle: the model directory's exemplars, as read back
    # (the distance measured again on the export's encodings)
    saved = load_exemplars(tiny_model_dir)
    assert [dataclasses.replace(e, distance=0.0) for e in bundle.exemplars] == [dataclasses.replace(e, distance=0.0) for e in saved]
    np.testing.assert_allclose([e.distance for e in bundle.exemplars], [e.distance for e in saved], atol=PUSH_TOLERANCE)
    assert [store[e.example_id].text for e in bundle.exemplars] == [e.text for e in bundle.exemplars]


def test_choose_variant_follows_device_preference(bundle_copy):
    bundle = Bundle.load(bundle_copy)
    assert bundle.choose_variant("cpu").name == "int8"
    assert bundle.choose_variant("gpu").name == "fp16"
    assert bundle.choose_variant("gpu", preferred="optimized").name == "optimized"
    with pytest.raises(ConfigError, match="built for the gpu"):
        bundle.choose_variant("cpu", preferred="fp16")
    with pytest.raises(ConfigError, match="not in this bundle"):
        bundle.choose_variant("cpu", preferred="int4")

    def refuse_int8(manifest):
        manifest["variants"][2].update(agreement=0.95, servable=False)

    reseal(bundle_copy, refuse_int8)
    bundle = Bundle.load(bundle_copy)
    assert bundle.choose_variant("cpu").name == "optimized"
    with pytest.raises(ConfigError, match="not servable"):
        bundle.choose_variant("cpu", preferred="int8")


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_one_flipped_byte_is_rejected_naming_the_file(bundle_copy, name, capsys):
    flip_byte(bundle_copy / name)
    with pytest.raises(BundleError, match=f"^{name}: sha256 mismatch"):
        Bundle.load(bundle_copy)
    assert main(["bundle", "verify", str(bundle_copy)]) == 3
    assert f"error: {name}: sha256 mismatch" in capsys.readouterr().err


def test_any_changed_byte_of_the_manifest_is_rejected(bundle_copy):
    path = bundle_copy / MANIFEST_FILE
    original = path.read_bytes()
    assert parse_manifest(original) == Bundle.load(bundle_copy).manifest
    for position in range(len(original)):
        for mask in (0x01, 0x20, 0xFF):  # 0x20 turns "e" into "E": the same JSON value, other bytes
            changed = bytearray(original)
            changed[position] ^= mask
            with pytest.raises(BundleError, match=f"^{MANIFEST_FILE}: "):
                parse_manifest(bytes(changed))
    flip_byte(path)
    with pytest.raises(BundleError, match=f"^{MANIFEST_FILE}: "):
        Bundle.load(bundle_copy, verify_checksums=False)


def test_missing_unlisted_and_unknown_version_are_rejected(bundle_copy):
    (bundle_copy / EXAMPLE_INDEX_FILE).unlink()
    with pytest.raises(BundleError, match=f"^{EXAMPLE_INDEX_FILE}: missing"):
        Bundle.load(bundle_copy)
    reseal(bundle_copy, lambda m: m["files"].pop(EXAMPLE_INDEX_FILE))
    with pytest.raises(BundleError, match=f"^{EXAMPLE_INDEX_FILE}: referred to by the manifest but not listed"):
        Bundle.load(bundle_copy)
    reseal(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="bundle format version 99; this protolm reads versions 1, 2, 3"):
        Bundle.load(bundle_copy)
    reseal(bundle_copy, lambda m: (m.update(format_version=FORMAT_VERSION), m.pop("labels")))
    with pytest.raises(BundleError, match="missing key 'labels'"):
        Bundle.load(bundle_copy)
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=f"^{MANIFEST_FILE}: missing"):
        Bundle.load(bundle_copy)


def test_a_format_1_bundle_is_still_served(bundle_copy):
    """Format 1 differed only in exemplars.json, a bare list; a bundle exported before
    format 2 loads and gives the same exemplars."""
    expected = Bundle.load(bundle_copy).exemplars
    path = bundle_copy / EXEMPLARS_FILE
    path.write_text(json.dumps(json.loads(path.read_text())["exemplars"]))

    def as_format_1(manifest):
        manifest["format_version"] = 1
        manifest["files"][EXEMPLARS_FILE] = file_entry(path)

    reseal(bundle_copy, as_format_1)
    bundle = Bundle.load(bundle_copy)
    assert bundle.manifest.format_version == 1 and bundle.exemplars == expected
    assert len(bundle.smoke_test()) > 0


def test_an_index_in_the_wrong_metric_is_refused(bundle_copy):
    reseal(bundle_copy, lambda m: m["indexes"]["examples"].update(metric="l2"))
    with pytest.raises(BundleError, match="the examples index uses 'l2', the cosine similarity needs 'cosine'"):
        Bundle.load(bundle_copy)
    reseal(bundle_copy, lambda m: m["architecture"].update(similarity="manhattan"))
    with pytest.raises(BundleError, match="unknown similarity 'manhattan'"):
        Bundle.load(bundle_copy)


def test_verify_command_reports_every_check(tiny_bundle, capsys):
    assert main(["bundle", "verify", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    for name in BUNDLE_FILES:
        assert name in out
    assert out.rstrip().endswith(")") and ": ok (" in out


def test_pushed_prototypes_are_their_exemplars_encodings(tiny_bundle, tiny_model_dir, capsys):
    """Push is the default: every prototype is its exemplar's encoding in the served fp32
    graphs, the bundle records it, and the training record holds accuracy before and after."""
    bundle = Bundle.load(tiny_bundle)
    assert bundle.manifest.architecture.prototypes_pushed
    assert {"accuracy_before_push", "accuracy_after_push"} <= set(TrainingRecord.read(tiny_model_dir).projection)
    assert max(e.distance for e in bundle.exemplars) <= PUSH_TOLERANCE
    for name in ("fp32", "optimized"):
        session = bundle.session(bundle.choose_variant("cpu", preferred=name))
        assert bundle.exemplar_distances(session).max() <= PUSH_TOLERANCE
    assert main(["bundle", "verify", str(tiny_bundle)]) == 0
    assert "model.onnx: every prototype is its exemplar's encoding" in capsys.readouterr().out


def test_verify_fails_when_a_prototype_is_not_its_exemplar(bundle_copy, capsys):
    import faiss

    vectors = Bundle.load(bundle_copy).prototype_vectors.copy()
    moved = vectors[2] + 0.05 * np.random.default_rng(0).standard_normal(vectors.shape[1]).astype(np.float32)
    vectors[2] = moved / np.linalg.norm(moved)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(bundle_copy / PROTOTYPE_INDEX_FILE))
    reseal(bundle_copy, lambda m: m["files"].update({PROTOTYPE_INDEX_FILE: file_entry(bundle_copy / PROTOTYPE_INDEX_FILE)}))
    assert main(["bundle", "verify", str(bundle_copy)]) == 3
    assert f"error: {EXEMPLARS_FILE}: prototype 2 is at distance" in capsys.readouterr().err


def test_without_push_the_bundle_records_each_prototypes_distance(tiny_encoder_dir, tmp_path, capsys):
    from protolm.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, TrainConfig
    from protolm.pipeline import run_training

    files = write_tiny_csvs(tmp_path, train_rows=60, validation_rows=30)
    config = TrainConfig(
        data=DataConfig(train_file=str(files["train"]), validation_file=str(files["validation"])),
        model=ModelOptions(encoder=str(tiny_encoder_dir), num_prototypes=6, max_length=32),
        optim=OptimConfig(output_dir=str(tmp_path / "model"), epochs=1, batch_size=16, push=False),
    )
    _, model_dir, _ = run_training(config, EvalConfig(faithfulness=False))
    assert main(["export", str(model_dir), str(tmp_path / "bundle"), "--variants", "", "--progress", "false"]) == 0
    bundle = Bundle.load(tmp_path / "bundle")
    assert not bundle.manifest.architecture.prototypes_pushed
    recorded = np.array([e.distance for e in bundle.exemplars])
    measured = bundle.exemplar_distances(bundle.session(bundle.choose_variant("cpu", preferred="fp32")))
    np.testing.assert_allclose(measured, recorded, atol=PUSH_TOLERANCE)
    capsys.readouterr()
    assert main(["bundle", "verify", str(tmp_path / "bundle")]) == 0
    assert "model.onnx: prototypes not pushed" in capsys.readouterr().out

    path = tmp_path / "bundle" / EXEMPLARS_FILE
    payload = json.loads(path.read_text())
    payload["exemplars"][4]["distance"] += 0.01
    path.write_text(json.dumps(payload))
    reseal(tmp_path / "bundle", lambda m: m["files"].update({EXEMPLARS_FILE: file_entry(path)}))
    assert main(["bundle", "verify", str(tmp_path / "bundle")]) == 3
    assert f"error: {EXEMPLARS_FILE}: prototype 4 is at distance" in capsys.readouterr().err


def test_export_command_builds_an_hnsw_fp32_only_bundle_and_refuses_to_overwrite(tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "bundle"
    args = ["export", str(tiny_model_dir), str(target), "--variants", "", "--example-index", "hnsw", "--progress", "false", "--model-version", "v1"]
    assert main(args) == 0
    manifest = Bundle.load(target).manifest
    assert [v.name for v in manifest.variants] == ["fp32"] and manifest.model.version == "v1"
    assert manifest.indexes.examples.kind == "hnsw" and manifest.indexes.examples.recall_at_10 > 0.9
    assert manifest.indexes.examples.m == 32 and manifest.indexes.examples.lists is None
    assert "recall@10" in capsys.readouterr().out
    assert main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left behind
