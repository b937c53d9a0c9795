#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/protolm/v1/protolm.proto.
# The proto path is mapped to service/grpc_api so the generated modules import as
# service.grpc_api.protolm_pb2 (the proto package stays protolm.v1).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
"${PYTHON:-python}" -m grpc_tools.protoc \
  -Iservice/grpc_api=proto/protolm/v1 \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  service/grpc_api/protolm.proto
