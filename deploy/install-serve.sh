#!/bin/sh
# Installs protolm's serving environment into a new virtual environment: protolm itself and
# the `serve` and `tracing` extras of pyproject.toml (no torch, no transformers), every version pinned by
# deploy/constraints.txt. deploy/Dockerfile runs this for both serving images; run it outside
# Docker to check the install an image gets (deploy/README.md, "What was exercised here").
#
#   install-serve.sh VENV PROJECT [cpu|gpu]
#
# PROJECT is the protolm source tree (or a built wheel) whose pyproject.toml names the extra.
# gpu installs onnxruntime-gpu and faiss-gpu-cu12 instead of onnxruntime and faiss-cpu, at
# $ONNXRUNTIME_GPU_VERSION and $FAISS_GPU_VERSION (deploy/serve_requirements.py).
set -eu

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: install-serve.sh VENV PROJECT [cpu|gpu]" >&2
    exit 2
fi
venv=$1
project=$2
flavour=${3:-cpu}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$python" "$here/serve_requirements.py" "$here/../pyproject.toml" "$flavour" > "$venv/serve-requirements.txt"
pip() { "$venv/bin/pip" --no-cache-dir --disable-pip-version-check "$@"; }
pip install --quiet --constraint "$here/constraints.txt" --requirement "$venv/serve-requirements.txt"
pip install --quiet --no-deps "$project"
# The serving path must not pull in the training stack.
if "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(not any(u.find_spec(m) for m in ('torch', 'transformers')))"; then
    echo "install-serve.sh: torch or transformers ended up in $venv" >&2
    exit 1
fi
echo "install-serve.sh: $flavour serving environment in $venv"
