"""Seldon MLServer 1.7.1 over a protolm bundle: its settings, command line and client side.

    python benchmarks/peers/mlserver.py BUNDLE_DIR [--grpc-port 8081] [--http-port 8080]

writes MLServer's ``settings.json`` and ``model-settings.json`` into a new temporary folder and
runs ``mlserver start`` on it in the foreground (Ctrl-C stops it); ``benchmarks/load_test.py``
uses the same pieces to run it on free ports beside protolm. MLServer and the runtime it
loads (``mlserver_runtime.py``) live in ``.venv-peers`` (``benchmarks/peers/setup.sh``):
MLServer pins protobuf < 7. This module runs in protolm's environment and imports neither.

The deployment is MLServer's defaults except: adaptive batching on (``max_batch_size`` 32,
``max_batch_time`` 5 ms), loopback only, no per-request access log (``debug`` false, as
protolm runs at WARNING in the benchmark), and its metrics on a port of their own. Inference
runs in MLServer's one default parallel worker process; the adaptive batcher in the main one.
Clients speak the Open Inference Protocol over gRPC with protolm's own stubs (same package,
service and messages as MLServer's ``dataplane.proto``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from core.bundle import read_manifest
from service.grpc_api import grpc_predict_v2_pb2 as oip
from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc

VENV = REPO / ".venv-peers"
MLSERVER = VENV / "bin" / "mlserver"
INSTALLED_MARKER = VENV / ".installed"  # written last by setup.sh
VERSION = "1.7.1"
# The runtime is imported by module path with the repository on PYTHONPATH: MLServer puts
# only the model-settings folder on sys.path, and this very file, were benchmarks/peers on
# it, would shadow the mlserver package.
IMPLEMENTATION = "benchmarks.peers.mlserver_runtime.ProtolmRuntime"
MAX_BATCH_SIZE = 32
MAX_BATCH_TIME = 0.005  # seconds
SETTINGS_FILE = "settings.json"
MODEL_SETTINGS_FILE = "model-settings.json"
TEXT, TEXT_PAIR, LOGITS = "text", "text_pair", "logits"


def installed() -> bool:
    """Whether setup.sh has built .venv-peers to the end."""
    return INSTALLED_MARKER.is_file() and MLSERVER.is_file()


@dataclass(frozen=True)
class Ports:
    """Where MLServer listens, all on 127.0.0.1."""

    grpc: int
    http: int
    metrics: int


@dataclass(frozen=True)
class Model:
    """What MLServer serves: the bundle, its graph variant and the name clients ask for."""

    bundle_dir: Path
    name: str
    version: str
    classes: int
    is_pair: bool
    variant: str = "optimized"

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, variant: str = "optimized") -> Model:
        manifest = read_manifest(bundle_dir, verify_checksums=False)  # the runtime verifies them as it loads
        return cls(Path(bundle_dir).resolve(), manifest.model.name, manifest.model.version, len(manifest.labels),
                   manifest.is_pair, variant)


def server_settings(folder: Path, ports: Ports) -> dict:
    """settings.json: loopback, the given ports, MLServer's own files kept in ``folder``."""
    return {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": ports.grpc,
        "http_port": ports.http,
        "metrics_port": ports.metrics,
        "environments_dir": str(folder / ".envs"),
        "metrics_dir": str(folder / ".metrics"),
    }


def model_settings(model: Model, max_batch_size: int = MAX_BATCH_SIZE, max_batch_time: float = MAX_BATCH_TIME) -> dict:
    """model-settings.json: the runtime, adaptive batching and the tensors it takes and gives."""
    texts = [TEXT, TEXT_PAIR] if model.is_pair else [TEXT]
    return {
        "name": model.name,
        "implementation": IMPLEMENTATION,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time,
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in texts],
        "outputs": [{"name": LOGITS, "datatype": "FP32", "shape": [-1, model.classes]}],
        "parameters": {"uri": str(model.bundle_dir), "version": model.version, "extra": {"variant": model.variant}},
    }


def write_settings(folder: Path, model: Model, ports: Ports, max_batch_size: int = MAX_BATCH_SIZE,
                   max_batch_time: float = MAX_BATCH_TIME) -> tuple[Path, Path]:
    """``folder/settings.json`` and ``folder/<model name>/model-settings.json``: an MLServer
    model repository rooted at ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    settings_path = folder / SETTINGS_FILE
    settings_path.write_text(json.dumps(server_settings(folder, ports), indent=2) + "\n")
    model_folder = folder / model.name
    model_folder.mkdir(exist_ok=True)
    model_path = model_folder / MODEL_SETTINGS_FILE
    model_path.write_text(json.dumps(model_settings(model, max_batch_size, max_batch_time), indent=2) + "\n")
    return settings_path, model_path


def command(folder: Path) -> list[str]:
    return [str(MLSERVER), "start", str(folder)]


def environment() -> dict[str, str]:
    """Variables for the MLServer process: the runtime and ``core`` import from the repository."""
    return {"PYTHONPATH": str(REPO)}


# -- the client side: protolm's own Open Inference Protocol stubs


def infer_request(model_name: str, texts: Sequence[str], text_pairs: Sequence[str] | None = None):
    def tensor(name: str, values: Sequence[str]):
        contents = oip.InferTensorContents(bytes_contents=[v.encode("utf-8") for v in values])
        return oip.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[len(values)], contents=contents)

    inputs = [tensor(TEXT, texts)] + ([tensor(TEXT_PAIR, text_pairs)] if text_pairs is not None else [])
    return oip.ModelInferRequest(model_name=model_name, inputs=inputs)


def logits_of(response) -> np.ndarray:
    """The ``logits`` output of a ModelInferResponse, typed or raw, as [N, classes]."""
    for position, output in enumerate(response.outputs):
        if output.name == LOGITS:
            shape = tuple(output.shape)
            if response.raw_output_contents:
                return np.frombuffer(response.raw_output_contents[position], dtype="<f4").reshape(shape)
            return np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(shape)
    raise ValueError(f"no {LOGITS} output in the response (outputs: {', '.join(o.name for o in response.outputs)})")


def model_ready(channel, model_name: str) -> bool:
    """The Open Inference Protocol's ModelReady, over a synchronous channel."""
    return oip_grpc.GRPCInferenceServiceStub(channel).ModelReady(oip.ModelReadyRequest(name=model_name), timeout=1).ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir")
    parser.add_argument("--variant", default="optimized", help="bundle variant the runtime serves")
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument("--max-batch-time", type=float, default=MAX_BATCH_TIME, help="seconds")
    args = parser.parse_args()
    if not installed():
        sys.exit(f"{VENV} is missing or incomplete: run benchmarks/peers/setup.sh")
    folder = Path(tempfile.mkdtemp(prefix="protolm-mlserver-"))
    model = Model.from_bundle(args.bundle_dir, args.variant)
    write_settings(folder, model, Ports(args.grpc_port, args.http_port, args.metrics_port), args.max_batch_size, args.max_batch_time)
    print(f"MLServer {VERSION} settings: {folder}; model {model.name!r} on 127.0.0.1:{args.grpc_port} (gRPC)", flush=True)
    os.execve(str(MLSERVER), command(folder), {**os.environ, **environment()})


if __name__ == "__main__":
    main()
