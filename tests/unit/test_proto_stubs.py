"""The committed gRPC stubs are exactly what the committed .proto files generate (protolm.v1
and the Open Inference Protocol)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = tuple(f"{name}{suffix}" for name in ("protolm_pb2", "grpc_predict_v2_pb2") for suffix in (".py", ".pyi", "_grpc.py"))


def test_regenerated_stubs_match_the_committed_ones(tmp_path):
    subprocess.run(["bash", str(REPO / "proto" / "generate.sh"), str(tmp_path)], check=True, env={**os.environ, "PYTHON": sys.executable})
    for name in GENERATED:
        fresh = (tmp_path / "service" / "grpc_api" / name).read_text()
        committed = (REPO / "service" / "grpc_api" / name).read_text()
        assert fresh == committed, f"service/grpc_api/{name} is stale: run proto/generate.sh"
