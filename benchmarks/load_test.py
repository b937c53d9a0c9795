"""Load benchmark of the gRPC service, side by side with its ceiling and a naive baseline.

    python benchmarks/load_test.py BUNDLE_DIR MODEL_DIR [--seconds 10]

In one run, on the same bundle and the same SST-2 validation sentences:
  1. the ceiling: raw ONNX Runtime throughput of the served variant at its best batch size
     (random sentences per batch, as independent callers send them; and, as a best case,
     batches cut from the length-sorted sentences);
  2. `protolm serve` (a separate process) under 1, 8, 32 and 128 concurrent callers, each
     sending one sentence per Classify (then Explain) call for a fixed time: throughput and
     p50 / p99 latency;
  3. the baseline a user would otherwise write: a gRPC server that runs the PyTorch model on
     each request as it comes (`benchmarks/naive_server.py`), under the same load.
Loopback only; every phase is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.grpc_api import protolm_pb2 as pb  # noqa: E402
from service.grpc_api import protolm_pb2_grpc as pb_grpc  # noqa: E402

CALLERS = (1, 8, 32, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sentences(limit: int = 872) -> list[str]:
    from protolm.data import DataSource, load_split

    return load_split(DataSource(task="sst2"), "validation").texts[:limit]


def raw_throughput(bundle_dir: str, texts: list[str], variant: str | None, seconds: float) -> tuple[dict, str]:
    """Sentences/s of the bare ONNX Runtime session at batch sizes 1..64, for two ways of
    forming batches: ``random`` (random sentences, sorted within the batch: what a batcher
    sees from independent callers) and ``sorted`` (cut from the length-sorted sentences: the
    least padding any batcher could reach)."""
    from service.backend import OnnxBackend
    from service.served_bundle import ServedBundle
    from service.preprocess import InputLimits, Preprocessor, TextInput

    bundle = ServedBundle.load(bundle_dir)
    chosen = bundle.choose_variant("cpu", variant)
    session = bundle.session(chosen, OnnxBackend.providers(False), OnnxBackend.session_options())
    backend = OnnxBackend(session, False, bundle.manifest.architecture.uses_token_type_ids)
    encoded = Preprocessor(bundle.tokenizer(), bundle.manifest.is_pair, InputLimits(10**6, 10**6)).encode([TextInput(t) for t in texts])
    backend.warmup()
    by_length = sorted(encoded, key=lambda e: e.length)
    shuffled = [encoded[i] for i in np.random.default_rng(0).permutation(len(encoded))]
    rates: dict = {"random": {}, "sorted": {}}
    for size in (1, 8, 16, 32, 64):
        for kind, order in (("random", shuffled), ("sorted", by_length)):
            batches = [sorted(order[i : i + size], key=lambda e: e.length) for i in range(0, len(order) - size + 1, size)]
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 10:
                for batch in batches:
                    backend.run(batch)
                    done += size
                    if time.perf_counter() - started >= seconds / 10:
                        break
            rates[kind][size] = done / (time.perf_counter() - started)
        print(f"  raw ONNX Runtime ({chosen.name}) batch {size:>3}: random batches {rates['random'][size]:7.1f}, "
              f"length-sorted batches {rates['sorted'][size]:7.1f} sentences/s", flush=True)
    return rates, chosen.name


async def load(port: int, method: str, texts: list[str], callers: int, seconds: float) -> dict:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ProtoLMServiceStub(channel)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            text = texts[i % len(texts)]
            i += callers
            started = time.perf_counter()
            try:
                if method == "Classify":
                    await stub.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text=text)]), timeout=30)
                else:
                    request = pb.ExplainRequest(inputs=[pb.TextInput(text=text)], options=pb.ExplainOptions(top_prototypes=3))
                    await stub.Explain(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    elapsed = time.perf_counter() - started
    await channel.close()
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "method": method,
        "callers": callers,
        "throughput": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "errors": errors,
    }


def start(command: list[str], env: dict, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited: {process.stderr.read()}")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return process
        except grpc.RpcError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"{command} did not become SERVING")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def run_server_phase(name: str, process: subprocess.Popen, port: int, methods: tuple[str, ...], texts: list[str], seconds: float) -> list[dict]:
    rows = []
    try:
        asyncio.run(load(port, "Classify", texts, 8, 2.0))  # warm-up, not reported
        for method in methods:
            for callers in CALLERS:
                row = asyncio.run(load(port, method, texts, callers, seconds))
                row["server"] = name
                print(f"  {name:<8} {method:<9} {callers:>4} callers: {row['throughput']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)
                rows.append(row)
    finally:
        stop(process)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir")
    parser.add_argument("model_dir", help="the trained model directory the bundle came from (for the naive PyTorch server)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    parser.add_argument("--variant", default=None, help="bundle variant to serve (default: the CPU's best servable)")
    parser.add_argument("--output", default="runs/benchmark-load.json")
    args = parser.parse_args()

    texts = sentences()
    print("ceiling:", flush=True)
    rates, variant = raw_throughput(args.bundle_dir, texts, args.variant, args.seconds)
    best_batch = max(rates["random"], key=rates["random"].get)
    ceiling, sorted_ceiling = rates["random"][best_batch], max(rates["sorted"].values())

    print("service:", flush=True)
    port = free_port()
    env = {"PROTOLM_PORT": str(port), "PROTOLM_HOST": "127.0.0.1", "PROTOLM_METRICS_PORT": "-1", "PROTOLM_VARIANT": variant,
           "PROTOLM_MAX_QUEUE_SIZE": "4096", "PROTOLM_MAX_BATCH_SIZE": str(max(best_batch, 32))}
    service = start([sys.executable, "-m", "cli.main", "--log-level", "WARNING", "serve", args.bundle_dir], env, port)
    rows = run_server_phase("service", service, port, ("Classify", "Explain"), texts, args.seconds)

    print("naive PyTorch baseline:", flush=True)
    port = free_port()
    naive = start([sys.executable, str(REPO / "benchmarks" / "naive_server.py"), args.model_dir, "--port", str(port)], {}, port)
    rows += run_server_phase("naive", naive, port, ("Classify",), texts, args.seconds)

    def find(server, method, callers):
        return next(r for r in rows if r["server"] == server and r["method"] == method and r["callers"] == callers)

    classify32, explain32, naive32 = find("service", "Classify", 32), find("service", "Explain", 32), find("naive", "Classify", 32)
    summary = {
        "variant": variant,
        "ceiling_sentences_per_s": ceiling,
        "ceiling_batch_size": best_batch,
        "sorted_ceiling_sentences_per_s": sorted_ceiling,
        "raw": rates,
        "classify_32_over_ceiling": classify32["throughput"] / ceiling,
        "classify_32_over_sorted_ceiling": classify32["throughput"] / sorted_ceiling,
        "explain_over_classify_p50_32": explain32["p50_ms"] / classify32["p50_ms"],
        "classify_32_over_naive_32": classify32["throughput"] / naive32["throughput"],
    }
    print("\nsummary (32 callers):")
    print(f"  raw ONNX Runtime ceiling ({variant}, random batches of {best_batch}): {ceiling:.1f} sentences/s")
    print(f"  best case (length-sorted batches): {sorted_ceiling:.1f} sentences/s")
    print(f"  service Classify / ceiling:          {summary['classify_32_over_ceiling']:.2f}  (goal >= 0.85)")
    print(f"  service Classify / best case:        {summary['classify_32_over_sorted_ceiling']:.2f}")
    print(f"  service Explain p50 / Classify p50:  {summary['explain_over_classify_p50_32']:.2f}  (goal <= 1.2)")
    print(f"  service Classify / naive PyTorch:    {summary['classify_32_over_naive_32']:.2f}  (goal >= 4)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
