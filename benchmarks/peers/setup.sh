#!/usr/bin/env bash
# Builds .venv-peers at the repository root: Seldon MLServer 1.7.1 and what the protolm
# runtime for it needs (requirements.txt beside this file), nothing of protolm itself.
# PYTHON picks the interpreter (MLServer 1.7.1 supports Python 3.9 to 3.12; default: the
# one protolm's .venv was made from, else python3). Running it again rebuilds from scratch.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venv-peers
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r benchmarks/peers/requirements.txt
# written last: load_test.py runs the peers only where this marker exists
cp benchmarks/peers/requirements.txt "$venv/.installed"
echo "$venv: $("$venv/bin/mlserver" --version)"
