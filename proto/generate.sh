#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/protolm/v1/protolm.proto and
# proto/inference/grpc_predict_v2.proto (the Open Inference Protocol).
# The proto paths are mapped to service/grpc_api so the generated modules import as
# service.grpc_api.protolm_pb2 and service.grpc_api.grpc_predict_v2_pb2 (the proto packages
# stay protolm.v1 and inference).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
for source in protolm/v1/protolm inference/grpc_predict_v2; do
  "${PYTHON:-python}" -m grpc_tools.protoc \
    -Iservice/grpc_api="proto/$(dirname "$source")" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "service/grpc_api/$(basename "$source").proto"
done
