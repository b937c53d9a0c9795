"""PyTorch eager against ONNX Runtime fp32, optimised and int8 (fp16 too on a GPU), side by side.

Run with ``make benchmark`` or ``python -m pytest -m benchmark tests/benchmarks -s``; it
trains and exports the SST-2 model first (a few minutes on a CPU).
"""

import os
import platform
import time

import numpy as np
import onnxruntime
import pytest
import torch

from protolm.data import DataSource, load_split
from protolm.model import load_model
from service.served_bundle import ServedBundle

pytestmark = pytest.mark.benchmark
BATCH, LENGTH = 32, 64
MIN_SECONDS, MIN_ROUNDS, BLOCK = 40.0, 3, 5


def blockwise_medians(runs) -> list[float]:
    """Median seconds per call of each run, timed in rounds of BLOCK calls per runtime.

    Rounds spread a change in the machine's background load over every runtime alike; within
    a round each runtime first makes an untimed call, because the thread pools of the one
    before it (ONNX Runtime's and OpenMP's spin for a while after a call) still hold the CPUs.
    """
    times: list[list[float]] = [[] for _ in runs]
    started = time.perf_counter()
    rounds = 0
    while rounds < MIN_ROUNDS or time.perf_counter() - started < MIN_SECONDS:
        for run, bucket in zip(runs, times):
            run()
            for _ in range(BLOCK):
                start = time.perf_counter()
                run()
                bucket.append(time.perf_counter() - start)
        rounds += 1
    return [float(np.median(bucket)) for bucket in times]


def test_throughput_side_by_side(trained_sst2_model, exported_sst2_bundle, shared_data_dir, capsys):
    model = load_model(trained_sst2_model[0])
    bundle = ServedBundle.load(exported_sst2_bundle)
    sentences = load_split(DataSource(task="sst2", data_dir=str(shared_data_dir)), "validation").texts[:BATCH]
    encoded = bundle.encode(sentences)
    assert encoded["input_ids"].shape[1] <= LENGTH
    feeds = {name: np.pad(array, ((0, 0), (0, LENGTH - array.shape[1]))) for name, array in encoded.items()}
    tensors = {name: torch.from_numpy(array) for name, array in feeds.items()}

    def eager():
        with torch.inference_mode():
            return model(**tensors).logits.numpy()

    rows = [("PyTorch eager", "cpu", eager)]
    targets = [("CPUExecutionProvider", "cpu", ("fp32", "optimized", "int8"))]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        targets.append(("CUDAExecutionProvider", "gpu", ("fp32", "optimized", "fp16")))
    for provider, device, names in targets:
        for variant in (v for v in bundle.manifest.variants if v.name in names):
            session = bundle.session(variant, [provider])
            label = f"ONNX Runtime {variant.name}" + ("" if variant.servable else " (not servable)")
            rows.append((label, device, lambda s=session: s.run(["logits"], feeds)[0]))

    reference = eager().argmax(1)
    agreements = [float((run().argmax(1) == reference).mean()) for _, _, run in rows]
    medians = blockwise_medians([run for _, _, run in rows])
    results = [(label, device, seconds, agreement) for (label, device, _), seconds, agreement in zip(rows, medians, agreements)]
    eager_seconds = results[0][2]
    with capsys.disabled():
        print(f"\n\n{BATCH} SST-2 validation sentences padded to {LENGTH} tokens, {bundle.manifest.model.name} ({bundle.manifest.encoder}), "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"onnxruntime {onnxruntime.__version__}")
        print(f"| {'runtime':<39} | device | ms / batch | sequences / s | speed-up | argmax = eager |")
        print(f"|{'-' * 41}|--------|-----------:|--------------:|---------:|---------------:|")
        for label, device, seconds, agreement in results:
            print(f"| {label:<39} | {device:<6} | {seconds * 1e3:>10.1f} | {BATCH / seconds:>13.1f} | {eager_seconds / seconds:>7.2f}x | {agreement:>14.1%} |")
    assert results[1][3] == 1.0  # ONNX Runtime fp32 predicts what PyTorch predicts
