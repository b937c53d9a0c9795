#!/usr/bin/env bash
# The main job end to end (`make demo`): train proto-lm on SST-2 with the packaged MiniLM,
# export a checked serving bundle, serve it, then classify and explain through the server.
# Times are for an idle 2-core machine; progress bars go to stderr, results to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=${PROTOLM_DEMO_DIR:-runs/demo}
PORT=${PROTOLM_DEMO_PORT:-50051}
protolm() { "$BIN/protolm" --log-level WARNING "$@"; }
step() { printf '\n[%s/5] %s\n' "$1" "$2"; }

step 1 "train proto-lm on 4,000 SST-2 sentences for 1 epoch, project and push the prototypes, evaluate (about 3 min)"
protolm train --task sst2 --max-train-samples 4000 --epochs 1 --output-dir "$RUN/model" --explain-text ''

step 2 "export the serving bundle: ONNX graph and its variants, FAISS indexes, exemplars (about 1 min)"
protolm export "$RUN/model" "$RUN/bundle" --overwrite --model-name protolm-sst2-demo --progress false

step 3 "verify the bundle: checksums, every variant run, every prototype its exemplar's encoding"
protolm bundle verify "$RUN/bundle" | tail -n 1

step 4 "serve it on 127.0.0.1:$PORT"
# not through the protolm function: $! would be its subshell, and killing that leaves the server running
"$BIN/protolm" --log-level WARNING serve "$RUN/bundle" --host 127.0.0.1 --port "$PORT" --metrics-port 0 --drain-delay 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  protolm health --server "127.0.0.1:$PORT" --timeout 1 >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "the server exited during start-up" >&2; exit 1; }
  sleep 0.5
done
echo "SERVING"

step 5 "classify two sentences and explain one through the server"
protolm classify --server "127.0.0.1:$PORT" "a gripping, beautifully acted film" "ninety minutes of tedium"
echo
protolm explain "127.0.0.1:$PORT" "a gripping, beautifully acted film that never loses its nerve" --colour auto
