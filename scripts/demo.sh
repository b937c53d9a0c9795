#!/usr/bin/env bash
# The main job end to end (`make demo`): train proto-lm on SST-2 with the packaged MiniLM,
# export a checked serving bundle, serve it, then classify and explain through the server.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=${PROTOLM_DEMO_DIR:-runs/demo}
PORT=${PROTOLM_DEMO_PORT:-50051}

"$BIN/protolm" train --task sst2 --max-train-samples 4000 --epochs 1 --output-dir "$RUN/model"
"$BIN/protolm" export "$RUN/model" "$RUN/bundle" --overwrite --model-name protolm-sst2-demo
"$BIN/protolm" bundle verify "$RUN/bundle"

"$BIN/protolm" serve "$RUN/bundle" --host 127.0.0.1 --port "$PORT" --metrics-port 0 --drain-delay 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  "$BIN/protolm" health --server "127.0.0.1:$PORT" --timeout 1 >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "the server exited during start-up" >&2; exit 1; }
  sleep 0.5
done
echo
"$BIN/protolm" classify --server "127.0.0.1:$PORT" "a gripping, beautifully acted film" "ninety minutes of tedium"
echo
"$BIN/protolm" explain "127.0.0.1:$PORT" "a gripping, beautifully acted film that never loses its nerve" --colour auto
