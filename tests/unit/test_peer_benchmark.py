"""The MLServer peer benchmark's pieces that need no running MLServer (benchmarks/peers/).

The settings files are checked twice: here, for what the benchmark promises (adaptive
batching at 32 inputs / 5 ms, loopback, the runtime named by module path), and, where
``benchmarks/peers/setup.sh`` has built ``.venv-peers``, by MLServer 1.7.1's own settings
classes in that environment: its pydantic settings ignore unknown keys, so every key written
must be one of their fields, and the runtime must import there and be an ``MLModel``.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import load_test
from benchmarks.peers import mlserver as peer
from service.grpc_api import grpc_predict_v2_pb2 as oip

MODEL = peer.Model(Path("/bundles/sst2"), "protolm-sst2", "v7", classes=2, is_pair=False, variant="optimized")
PORTS = peer.Ports(grpc=50061, http=50062, metrics=50063)

# Run in .venv-peers: parse the files with MLServer's classes, list keys they do not know.
CHECK_WITH_MLSERVER = """
import json, sys
from mlserver import MLModel, __version__
from mlserver.settings import ModelParameters, ModelSettings, Settings

def unknown(cls, values):
    known = set()
    for name, field in cls.model_fields.items():
        known.add(name)
        aliases = getattr(field.validation_alias, "choices", None) or [field.validation_alias]
        known.update(a for a in aliases if isinstance(a, str))
    return sorted(set(values) - known)

settings_path, model_path = sys.argv[1:3]
settings, model = Settings.parse_file(settings_path), ModelSettings.parse_file(model_path)
raw_settings, raw_model = json.load(open(settings_path)), json.load(open(model_path))
print(json.dumps({
    "version": __version__,
    "unknown": unknown(Settings, raw_settings) + unknown(ModelSettings, raw_model)
               + unknown(ModelParameters, raw_model["parameters"]),
    "grpc_port": settings.grpc_port, "http_port": settings.http_port, "metrics_port": settings.metrics_port,
    "host": settings.host, "debug": settings.debug, "metrics_dir": settings.metrics_dir,
    "name": model.name, "max_batch_size": model.max_batch_size, "max_batch_time": model.max_batch_time,
    "uri": model.parameters.uri, "version_parameter": model.parameters.version, "extra": model.parameters.extra,
    "inputs": [[t.name, t.datatype, t.shape] for t in model.inputs],
    "outputs": [[t.name, t.datatype, t.shape] for t in model.outputs],
    "runtime_is_an_mlmodel": issubclass(model.implementation, MLModel),
}))
"""


@pytest.fixture
def written(tmp_path) -> tuple[Path, Path]:
    return peer.write_settings(tmp_path, MODEL, PORTS)


def test_the_settings_ask_for_adaptive_batching_on_loopback_ports(written, tmp_path):
    settings, model = (json.loads(path.read_text()) for path in written)
    assert written == (tmp_path / "settings.json", tmp_path / "protolm-sst2" / "model-settings.json")
    assert (settings["grpc_port"], settings["http_port"], settings["metrics_port"]) == (50061, 50062, 50063)
    assert settings["host"] == "127.0.0.1" and settings["debug"] is False
    assert Path(settings["metrics_dir"]).parent == tmp_path  # MLServer's files stay out of the repository
    assert (model["max_batch_size"], model["max_batch_time"]) == (32, 0.005)
    assert model["parameters"] == {"uri": "/bundles/sst2", "version": "v7", "extra": {"variant": "optimized"}}
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]


def test_a_pair_model_takes_a_second_text():
    model = peer.model_settings(peer.Model(Path("/b"), "mrpc", "1", classes=2, is_pair=True))
    assert [i["name"] for i in model["inputs"]] == ["text", "text_pair"]


def test_the_runtime_named_in_the_settings_exists_and_imports_no_protolm_torch_code():
    module, _, name = peer.IMPLEMENTATION.rpartition(".")
    path = peer.REPO / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    assert name in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "pathlib", "numpy", "onnxruntime", "tokenizers", "mlserver", "core"}


def test_mlserver_1_7_1_reads_the_settings_as_written(written):
    python = peer.VENV / "bin" / "python"
    if not peer.installed():
        pytest.skip(f"{peer.VENV} is not built (benchmarks/peers/setup.sh): MLServer's own settings classes are not here to check against")
    result = subprocess.run([str(python), "-c", CHECK_WITH_MLSERVER, *map(str, written)], check=False, capture_output=True, text=True, timeout=120,
                            cwd=peer.REPO, env={"PYTHONPATH": str(peer.REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["version"] == peer.VERSION
    assert parsed["unknown"] == []
    assert (parsed["grpc_port"], parsed["http_port"], parsed["metrics_port"], parsed["host"], parsed["debug"]) == (50061, 50062, 50063, "127.0.0.1", False)
    assert (parsed["name"], parsed["max_batch_size"], parsed["max_batch_time"]) == ("protolm-sst2", 32, 0.005)
    assert (parsed["uri"], parsed["version_parameter"], parsed["extra"]) == ("/bundles/sst2", "v7", {"variant": "optimized"})
    assert parsed["inputs"] == [["text", "BYTES", [-1]]] and parsed["outputs"] == [["logits", "FP32", [-1, 2]]]
    assert parsed["runtime_is_an_mlmodel"]


def test_the_request_carries_one_bytes_tensor_and_the_logits_decode_typed_or_raw():
    request = peer.infer_request("protolm-sst2", ["naïve but fun 🎬"])
    (tensor,) = request.inputs
    assert (request.model_name, tensor.name, tensor.datatype, list(tensor.shape)) == ("protolm-sst2", "text", "BYTES", [1])
    assert tensor.contents.bytes_contents == ["naïve but fun 🎬".encode()]
    logits = np.array([[0.5, -1.0], [2.0, 3.0]], dtype=np.float32)
    output = oip.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[2, 2])
    typed = oip.ModelInferResponse(outputs=[output])
    typed.outputs[0].contents.fp32_contents.extend(logits.ravel().tolist())
    raw = oip.ModelInferResponse(outputs=[output], raw_output_contents=[logits.astype("<f4").tobytes()])
    np.testing.assert_array_equal(peer.logits_of(typed), logits)
    np.testing.assert_array_equal(peer.logits_of(raw), logits)
    with pytest.raises(ValueError, match="no logits output"):
        peer.logits_of(oip.ModelInferResponse())


def test_agreement_compares_argmax_and_probabilities():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    logits = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]))
    result = load_test.agreement(reference, logits)
    assert (result["sentences"], result["equal_predictions"]) == (3, 2)
    assert result["max_probability_difference"] == pytest.approx(0.3)
