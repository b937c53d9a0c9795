"""The serving path loads and runs a bundle with onnxruntime, tokenizers, faiss and numpy only."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, sys

BLOCKED = ("torch", "transformers")
attempts = []

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is not installed on a serving machine")

sys.meta_path.insert(0, NoTorch())

import numpy as np
from service.served_bundle import ServedBundle

bundle = ServedBundle.load(sys.argv[1])
feeds = bundle.encode(["a fine film", "dull"])
session = bundle.session(bundle.choose_variant("cpu"))
logits, pooled = session.run(["logits", "pooled"], feeds)
_, prototypes = bundle.prototype_index().search(pooled, 3)
_, examples = bundle.example_index().search(pooled, 3)
store = bundle.examples()
rows = [store[int(i)] for i in examples[0]]
assert logits.shape == (2, len(bundle.manifest.labels)) and len(rows) == 3 and bundle.exemplars
bundle.smoke_test()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not attempts and not leaked, (attempts, leaked)
print("served without torch:", bundle.choose_variant("cpu").name, rows[0].text)
"""


def test_bundle_loads_and_runs_without_torch_or_transformers(tiny_bundle):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_bundle)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served without torch: int8" in result.stdout
