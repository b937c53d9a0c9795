"""Load benchmark of the gRPC service, side by side with its ceiling and a naive baseline.

    python benchmarks/load_test.py BUNDLE_DIR [MODEL_DIR] [--data-dir DIR] [--seconds 10]

In one run, on the same bundle and the same SST-2 validation sentences:
  0. how busy the machine is (load average, the CPU other processes take, the busiest ones),
     at the start and again at the end: figures from a busy machine are only good as ratios;
  1. the ceiling, defined as the bare ONNX Runtime session of the served variant running
     batches of ``--max-batch-size`` cut from the length-sorted sentences (the least padding
     any batcher could reach at that batch size); beside it, batches of the same size of
     random sentences (what batching independent callers without sorting gives) and both
     kinds at batch sizes 1 and 8; each point measured for ``--ceiling-seconds``;
  2. `protolm serve` (a separate process, its log in the output folder) under each number of
     ``--callers``, each caller sending one sentence per Classify (then Explain) call for
     ``--seconds``: throughput, p50 / p99 latency, and from the server's own metrics the mean
     batch size and the share of each batch's tokens that was padding;
  3. with MODEL_DIR, the baseline a user would otherwise write: a gRPC server that runs the
     PyTorch model on each request as it comes (`benchmarks/naive_server.py`), same load;
  4. with ``--peers`` (the default once `benchmarks/peers/setup.sh` has built `.venv-peers`),
     Seldon MLServer 1.7.1 over the same graph variant and tokenizer with its adaptive
     batching (`benchmarks/peers/`), the same callers sending one sentence per Open Inference
     Protocol ModelInfer call; first, its predictions on ``--agreement-sentences`` sentences
     are checked against protolm's Classify (argmax of its logits, and the softmax of its
     logits against protolm's probabilities).
At the end, one table of every server's rows and the ceilings, side by side.
Loopback only; every phase is bounded in time and stops by itself. The JSON report goes to
``--output`` (default: a new folder under the system's temporary directory, never the
repository).
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
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.peers import mlserver as peer
from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc

BATCH_METRICS = ("protolm_batch_size_sum", "protolm_batch_size_count", "protolm_batch_tokens_sum", "protolm_batch_real_tokens_sum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_load(seconds: float = 2.0) -> dict:
    """Load average, the share of all cores busy over ``seconds`` and the busiest processes
    (Linux /proc; elsewhere only the load average)."""
    def cpu_times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    def process_times() -> dict[int, tuple[str, int]]:
        times = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    name = stat[stat.index("(") + 1 : stat.rindex(")")]
                    rest = stat[stat.rindex(")") + 2 :].split()
                    times[int(entry.name)] = (name, int(rest[11]) + int(rest[12]))
                except (OSError, ValueError, IndexError):
                    pass
        return times

    report: dict = {"load_average_1m": os.getloadavg()[0], "cores": os.cpu_count()}
    if not Path("/proc/stat").exists():
        return report
    total0, idle0 = cpu_times()
    procs0 = process_times()
    time.sleep(seconds)
    total1, idle1 = cpu_times()
    procs1 = process_times()
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    ticks = os.sysconf("SC_CLK_TCK") * seconds
    busiest = sorted(
        ((procs1[pid][1] - procs0[pid][1]) / ticks, procs1[pid][0], pid) for pid in procs1 if pid in procs0 and pid != os.getpid()
    )[::-1][:3]
    report.update(cpu_busy=busy, busiest=[{"pid": pid, "name": name, "cores": round(cores, 2)} for cores, name, pid in busiest if cores > 0.05])
    return report


def print_load(when: str, load: dict) -> None:
    line = f"machine {when}: load average {load['load_average_1m']:.2f} on {load['cores']} cores"
    if "cpu_busy" in load:
        line += f", CPU {load['cpu_busy']:.0%} busy"
        if load["busiest"]:
            line += " (busiest: " + ", ".join(f"{p['name']} {p['pid']} {p['cores']:.2f} cores" for p in load["busiest"]) + ")"
        if load["cpu_busy"] > 0.1:
            line += "; NOT idle: compare figures within this run only"
    print(line, flush=True)


def sentences(data_dir: str | None, limit: int = 872) -> list[str]:
    from protolm.data import DataSource, load_split

    return load_split(DataSource(task="sst2", data_dir=data_dir), "validation").texts[:limit]


def raw_throughput(bundle_dir: str, texts: list[str], variant: str | None, sizes: list[int], seconds: float) -> tuple[dict, str]:
    """Sentences/s of the bare ONNX Runtime session at each batch size, for two ways of
    forming batches: ``random`` (random sentences, sorted within the batch: what a batcher
    sees from independent callers) and ``sorted`` (cut from the length-sorted sentences: the
    least padding any batcher could reach). Each point runs for ``seconds``."""
    from service.backend import OnnxBackend
    from service.preprocess import InputLimits, Preprocessor, TextInput
    from service.served_bundle import ServedBundle

    bundle = ServedBundle.load(bundle_dir)
    chosen = bundle.choose_variant("cpu", variant)
    session = bundle.session(chosen, OnnxBackend.providers(False), OnnxBackend.session_options())
    backend = OnnxBackend(session, False, bundle.manifest.architecture.uses_token_type_ids)
    encoded = Preprocessor(bundle.tokenizer(), bundle.manifest.is_pair, InputLimits(10**6, 10**6)).encode([TextInput(t) for t in texts])
    backend.warmup()
    by_length = sorted(encoded, key=lambda e: e.length)
    shuffled = [encoded[i] for i in np.random.default_rng(0).permutation(len(encoded))]
    rates: dict = {"random": {}, "sorted": {}, "padding": {"random": {}, "sorted": {}}}
    for size in sizes:
        for kind, order in (("random", shuffled), ("sorted", by_length)):
            batches = [sorted(order[i : i + size], key=lambda e: e.length) for i in range(0, len(order) - size + 1, size)]
            real = sum(e.length for b in batches for e in b)
            rates["padding"][kind][size] = 1.0 - real / sum(len(b) * b[-1].length for b in batches)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for batch in batches:
                    backend.run(batch)
                    done += size
                    if time.perf_counter() - started >= seconds:
                        break
            rates[kind][size] = done / (time.perf_counter() - started)
        print(f"  batch {size:>3}: random sentences {rates['random'][size]:7.1f}/s (padding {rates['padding']['random'][size]:.0%}), "
              f"length-sorted {rates['sorted'][size]:7.1f}/s (padding {rates['padding']['sorted'][size]:.0%})", flush=True)
    return rates, chosen.name


def scrape(metrics_port: int | None) -> dict[str, float]:
    """The batch histograms' sums and counts from the server's /metrics."""
    if metrics_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in BATCH_METRICS:
            values[name] = float(value)
    return values


def batch_shape(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean batch size and padding share of the batches run between two scrapes."""
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in BATCH_METRICS}
    count, tokens = delta["protolm_batch_size_count"], delta["protolm_batch_tokens_sum"]
    if not count or not tokens:
        return {}
    shape = {"batches": int(count), "mean_batch_size": delta["protolm_batch_size_sum"] / count}
    if "protolm_batch_real_tokens_sum" in after:
        shape["padding_share"] = 1.0 - delta["protolm_batch_real_tokens_sum"] / tokens
    return shape


def one_sentence_call(channel: grpc.aio.Channel, method: str, model_name: str | None):
    """An awaitable call of ``method`` with one sentence: protolm.v1 Classify or Explain, or
    the Open Inference Protocol's ModelInfer on ``model_name`` (MLServer)."""
    if method == "ModelInfer":
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        return lambda text: oip_stub.ModelInfer(peer.infer_request(model_name, [text]), timeout=30)
    stub = pb_grpc.ProtoLMServiceStub(channel)
    if method == "Classify":
        return lambda text: stub.Classify(pb.ClassifyRequest(inputs=[pb.TextInput(text=text)]), timeout=30)
    options = pb.ExplainOptions(top_prototypes=3)
    return lambda text: stub.Explain(pb.ExplainRequest(inputs=[pb.TextInput(text=text)], options=options), timeout=30)


async def load(port: int, method: str, texts: list[str], callers: int, seconds: float, model_name: str | None = None) -> dict:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = one_sentence_call(channel, method, model_name)
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
                await call(text)
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


def serving(channel: grpc.Channel) -> bool:
    """grpc.health.v1 says SERVING (protolm and the naive server)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING


class Server:
    """A server process whose stdout and stderr go to a file (a pipe nobody reads would
    block a chatty server), ready (``ready``: grpc.health.v1 SERVING unless told otherwise)
    before it is used. ``model_name``: the model its Open Inference Protocol calls name."""

    def __init__(self, command: list[str], env: dict, port: int, log_path: Path, metrics_port: int | None = None,
                 ready: Callable[[grpc.Channel], bool] = serving, model_name: str | None = None):
        self.port, self.metrics_port, self.log_path, self.model_name = port, metrics_port, log_path, model_name
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop(), after the process)
        self.process = subprocess.Popen(command, env={**os.environ, **env}, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 180
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{' '.join(command)} exited with {self.process.returncode}; its log: {log_path}")
                try:
                    if ready(channel):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.25)
            raise RuntimeError(f"{' '.join(command)} was not ready in 180 s; its log: {log_path}")
        except BaseException:
            self.stop()
            raise
        finally:
            channel.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def service_command(bundle_dir: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "--log-level", "WARNING", "serve", bundle_dir]


def service_env(port: int, metrics_port: int, variant: str, max_batch_size: int) -> dict:
    # no drain delay: the benchmark stops the server between phases, nobody balances load
    return {"PROTOLM_PORT": str(port), "PROTOLM_HOST": "127.0.0.1", "PROTOLM_METRICS_PORT": str(metrics_port),
            "PROTOLM_METRICS_HOST": "127.0.0.1", "PROTOLM_VARIANT": variant, "PROTOLM_MAX_QUEUE_SIZE": "4096",
            "PROTOLM_MAX_BATCH_SIZE": str(max_batch_size), "PROTOLM_DRAIN_DELAY": "0"}


def measure_point(name: str, server: Server, method: str, callers: int, texts: list[str], seconds: float) -> dict:
    before = scrape(server.metrics_port)
    row = asyncio.run(load(server.port, method, texts, callers, seconds, server.model_name))
    row.update(batch_shape(before, scrape(server.metrics_port)), server=name)
    shape = ""
    if "mean_batch_size" in row:
        shape = f"  batch {row['mean_batch_size']:5.1f}"
        if "padding_share" in row:
            shape += f"  padding {row['padding_share']:5.1%}"
    print(f"  {name:<8} {method:<9} {callers:>4} callers: {row['throughput']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
          f"p99 {row['p99_ms']:7.1f} ms{shape}  errors {row['errors']}", flush=True)
    return row


def run_server_phase(name: str, server: Server, methods: tuple[str, ...], callers: list[int], texts: list[str], seconds: float) -> list[dict]:
    rows = []
    try:
        asyncio.run(load(server.port, methods[0], texts, 8, 2.0, server.model_name))  # warm-up, not reported
        for method in methods:
            for count in callers:
                rows.append(measure_point(name, server, method, count, texts, seconds))
    finally:
        server.stop()
    return rows


async def concurrent_replies(port: int, method: str, texts: list[str], model_name: str | None = None) -> list:
    """One ``method`` call per sentence, all at once (so a batcher merges and pads them as
    under load); the replies in the sentences' order."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = one_sentence_call(channel, method, model_name)
        return await asyncio.gather(*(call(text) for text in texts))


def protolm_probabilities(port: int, texts: list[str]) -> np.ndarray:
    """Classify's probabilities [N, classes]."""
    replies = asyncio.run(concurrent_replies(port, "Classify", texts))
    return np.array([[c.probability for c in sorted(r.results[0].probabilities, key=lambda c: c.label_id)] for r in replies])


def peer_logits(port: int, model_name: str, texts: list[str]) -> np.ndarray:
    """MLServer's logits [N, classes]."""
    return np.concatenate([peer.logits_of(r) for r in asyncio.run(concurrent_replies(port, "ModelInfer", texts, model_name))])


def agreement(reference: np.ndarray, logits: np.ndarray) -> dict:
    """The peer's predictions (argmax of its logits) against protolm's, and the largest
    difference between its softmax and protolm's probabilities."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    equal = int((logits.argmax(axis=1) == reference.argmax(axis=1)).sum())
    return {"sentences": len(reference), "equal_predictions": equal, "agreement": equal / len(reference),
            "max_probability_difference": float(np.abs(probabilities - reference).max())}


def peer_phase(bundle_dir: str, variant: str, texts: list[str], reference: np.ndarray, callers: list[int], seconds: float,
               folder: Path) -> tuple[list[dict], dict]:
    """MLServer over the same graph variant and tokenizer: agreement with protolm, then the load."""
    model = peer.Model.from_bundle(bundle_dir, variant)
    ports = peer.Ports(free_port(), free_port(), free_port())
    peer.write_settings(folder / "mlserver", model, ports)
    server = Server(peer.command(folder / "mlserver"), peer.environment(), ports.grpc, folder / "mlserver.log",
                    ready=lambda channel: peer.model_ready(channel, model.name), model_name=model.name)
    try:
        agreed = agreement(reference, peer_logits(ports.grpc, model.name, texts[: len(reference)]))
    except BaseException:
        server.stop()
        raise
    print(f"  agreement with protolm Classify: {agreed['equal_predictions']}/{agreed['sentences']} predictions equal, "
          f"largest probability difference {agreed['max_probability_difference']:.1e}", flush=True)
    return run_server_phase("mlserver", server, ("ModelInfer",), callers, texts, seconds), agreed


def print_table(rows: list[dict], rates: dict, size: int, variant: str) -> None:
    """Every measured row and the raw ceilings, side by side (Markdown)."""
    names = {"service": "protolm", "mlserver": f"MLServer {peer.VERSION} (adaptive batching)", "naive": "naive PyTorch (per request)"}
    print("\n| server | method | callers | throughput (req/s) | p50 (ms) | p99 (ms) |\n|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {names[row['server']]} | {row['method']} | {row['callers']} | {row['throughput']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
    for kind, how in (("sorted", "length-sorted"), ("random", "random")):
        print(f"| bare ONNX Runtime ({variant}), {how} batches of {size} | | | {rates[kind][size]:.1f} sentences/s | | |")


def default_output() -> Path:
    return Path(tempfile.mkdtemp(prefix=f"protolm-load-{time.strftime('%Y%m%dT%H%M%S')}-")) / "load.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir")
    parser.add_argument("model_dir", nargs="?", help="the trained model directory the bundle came from: runs the naive PyTorch server too")
    parser.add_argument("--data-dir", default=os.environ.get("PROTOLM_DATA_DIR"),
                        help="folder holding sst2/validation.jsonl.gz (default: $PROTOLM_DATA_DIR; without either, the Hugging Face hub)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load measurement")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="duration of each raw ONNX Runtime measurement")
    parser.add_argument("--callers", default="1,8,32,128", help="concurrent callers, comma-separated")
    parser.add_argument("--methods", default="Classify,Explain", help="service methods to load, comma-separated")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the server's --max-batch-size, and the ceiling's batch size")
    parser.add_argument("--variant", default=None, help="bundle variant to serve (default: the CPU's best servable)")
    parser.add_argument("--output", default=None, help="JSON report (default: load.json in a new temporary folder)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                        help="run Seldon MLServer over the same graph too (default: on once benchmarks/peers/setup.sh has built .venv-peers)")
    parser.add_argument("--agreement-sentences", type=int, default=20,
                        help="sentences on which MLServer's predictions are checked against protolm's")
    args = parser.parse_args()
    peers = peer.installed() if args.peers is None else args.peers
    if peers and not peer.installed():
        parser.error(f"--peers needs {peer.VENV}: run benchmarks/peers/setup.sh")
    callers = [int(c) for c in args.callers.split(",")]
    methods = tuple(m.strip() for m in args.methods.split(","))
    output = Path(args.output) if args.output else default_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"report and server logs: {output.parent}", flush=True)

    load_start = machine_load()
    print_load("at the start", load_start)
    texts = sentences(args.data_dir)
    size = args.max_batch_size
    sizes = sorted({1, 8, size})
    print(f"ceiling (bare ONNX Runtime, {args.ceiling_seconds:g} s a point; the ceiling is length-sorted batches of {size}):", flush=True)
    rates, variant = raw_throughput(args.bundle_dir, texts, args.variant, sizes, args.ceiling_seconds)
    ceiling, random_batches = rates["sorted"][size], rates["random"][size]

    print(f"service ({variant}, --max-batch-size {size}):", flush=True)
    port, metrics_port = free_port(), free_port()
    service = Server(service_command(args.bundle_dir), service_env(port, metrics_port, variant, size), port,
                     output.parent / "service.log", metrics_port)
    reference = None
    if peers:  # protolm's own answers, for the peer's agreement check
        try:
            reference = protolm_probabilities(port, texts[: args.agreement_sentences])
        except BaseException:
            service.stop()
            raise
    rows = run_server_phase("service", service, methods, callers, texts, args.seconds)

    if args.model_dir:
        print("naive PyTorch baseline:", flush=True)
        port = free_port()
        naive = Server([sys.executable, str(REPO / "benchmarks" / "naive_server.py"), args.model_dir, "--port", str(port)], {}, port,
                       output.parent / "naive.log")
        rows += run_server_phase("naive", naive, ("Classify",), callers, texts, args.seconds)

    peer_agreement = None
    if reference is not None:
        print(f"MLServer {peer.VERSION} ({variant}, adaptive batching: max batch {peer.MAX_BATCH_SIZE}, "
              f"max wait {peer.MAX_BATCH_TIME * 1000:g} ms):", flush=True)
        peer_rows, peer_agreement = peer_phase(args.bundle_dir, variant, texts, reference, callers, args.seconds, output.parent)
        rows += peer_rows

    def find(server, method, count):
        return next((r for r in rows if r["server"] == server and r["method"] == method and r["callers"] == count), None)

    load_end = machine_load()
    print_load("at the end", load_end)
    summary: dict = {"variant": variant, "max_batch_size": size,
                     "ceiling": f"bare ONNX Runtime, length-sorted batches of {size}",
                     "ceiling_sentences_per_s": ceiling, "random_batches_sentences_per_s": random_batches, "raw": rates,
                     "machine_at_start": load_start, "machine_at_end": load_end}
    if peer_agreement is not None:
        summary["mlserver_agreement"] = peer_agreement
    print(f"\nsummary (ceiling: {variant}, length-sorted batches of {size}, {ceiling:.1f} sentences/s; "
          f"random batches of {size}: {random_batches:.1f}/s):")
    for count in callers:
        classify, explain, naive = find("service", "Classify", count), find("service", "Explain", count), find("naive", "Classify", count)
        mlserver = find("mlserver", "ModelInfer", count)
        if classify is None:
            continue
        point = {"classify_over_ceiling": classify["throughput"] / ceiling,
                 "classify_over_random_batches": classify["throughput"] / random_batches}
        line = (f"  {count:>4} callers: Classify / ceiling {point['classify_over_ceiling']:.2f}, "
                f"/ random batches {point['classify_over_random_batches']:.2f}")
        if explain is not None:
            point["explain_over_classify_p50"] = explain["p50_ms"] / classify["p50_ms"]
            line += f", Explain p50 / Classify p50 {point['explain_over_classify_p50']:.2f}"
        if naive is not None:
            point["classify_over_naive"] = classify["throughput"] / naive["throughput"]
            line += f", Classify / naive PyTorch {point['classify_over_naive']:.2f}"
        if mlserver is not None:
            point["classify_over_mlserver"] = classify["throughput"] / mlserver["throughput"]
            line += f", Classify / MLServer {point['classify_over_mlserver']:.2f}"
        summary[f"callers_{count}"] = point
        print(line)
    print_table(rows, rates, size, variant)
    output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    print(f"report: {output}")


if __name__ == "__main__":
    main()
