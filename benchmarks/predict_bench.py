"""`protolm predict` on SST-2 sentences: here, through local Ray, and the server at 32 callers.

    python benchmarks/predict_bench.py BUNDLE_DIR [--rows 20000] [--server-seconds 30]

1. the first ROWS sentences of the SST-2 training split (``$PROTOLM_DATA_DIR/sst2``) as JSONL;
2. ``protolm predict BUNDLE in.jsonl out.jsonl`` (its own process): wall time, rows/s;
3. the same with ``--ray local`` (a Ray instance started by the command, one actor per CPU),
   wall time including Ray's start, rows/s; and whether every row got the same label;
4. ``protolm serve`` on the same bundle under 32 callers, one sentence per Classify call
   (``benchmarks/load_test.py``'s load loop), for ``--server-seconds``: rows/s.
Prints a table and writes it as JSON; the 1-minute load average is recorded before each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from load_test import free_port, load


def sst2_input(path: Path, rows: int) -> list[str]:
    data = Path(os.environ.get("PROTOLM_DATA_DIR", REPO.parent / "shared" / "datasets")) / "sst2" / "train.jsonl.gz"
    texts = []
    with gzip.open(data, "rt", encoding="utf-8") as source, open(path, "w", encoding="utf-8") as target:
        for line in source:
            record = json.loads(line)
            texts.append(record["text"])
            target.write(json.dumps({"text": record["text"], "idx": record["idx"]}) + "\n")
            if len(texts) == rows:
                break
    return texts


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_predict(bundle: str, source: Path, output: Path, extra: list[str]) -> dict:
    load_average = os.getloadavg()[0]
    cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, "-m", "cli.main", "predict", bundle, str(source), str(output), "--overwrite", "--progress", "false", *extra]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    # CPU of the command and the processes it waited for; not of Ray's workers, which Ray's
    # own processes start and end, so no figure for Ray
    cpu = None if "--ray" in extra else cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(output) as handle:
        labels = [json.loads(line)["label"] for line in handle]
    return {"seconds": seconds, "rows": len(labels), "rows_per_second": len(labels) / seconds, "cpu_seconds": cpu,
            "rows_per_cpu_second": cpu and len(labels) / cpu, "load_average": load_average, "labels": labels}


def serve(bundle: str, port: int, log_path: Path) -> subprocess.Popen:
    """`protolm serve BUNDLE` on 127.0.0.1:PORT, returned once its health check says SERVING."""
    import grpc

    from service.client import ProtoLMClient

    env = {**os.environ, "PROTOLM_PORT": str(port), "PROTOLM_HOST": "127.0.0.1", "PROTOLM_METRICS_PORT": "-1", "PROTOLM_DRAIN_DELAY": "0"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "--log-level", "WARNING", "serve", bundle], cwd=REPO, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    with ProtoLMClient(f"127.0.0.1:{port}", timeout=1) as client:
        for _ in range(720):
            if process.poll() is not None:
                raise RuntimeError(f"protolm serve exited with {process.returncode}; see {log_path}")
            try:
                if client.health() == "SERVING":
                    return process
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"protolm serve was not SERVING after 3 minutes; see {log_path}")


def describe(phase: dict) -> str:
    line = f"{phase['rows']:,} rows in {phase['seconds']:.1f} s = {phase['rows_per_second']:.1f} rows/s"
    if phase["cpu_seconds"] is not None:
        line += f"; {phase['cpu_seconds']:.0f} CPU-s = {phase['rows_per_cpu_second']:.0f} rows per CPU-second"
    return f"{line} (load {phase['load_average']:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--server-seconds", type=float, default=30.0)
    parser.add_argument("--work", default="runs/predict-bench")
    parser.add_argument("--skip", default="", help="comma-separated phases to leave out: local, ray, server")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / "sst2-train.jsonl"
    texts = sst2_input(source, args.rows)
    report: dict = {"bundle": args.bundle_dir, "rows": len(texts), "cpus": os.cpu_count()}
    if "local" not in skip:
        report["local"] = timed_predict(args.bundle_dir, source, work / "local.jsonl", [])
        print(f"local: {describe(report['local'])}", flush=True)
    if "ray" not in skip:
        report["ray"] = timed_predict(args.bundle_dir, source, work / "ray.jsonl", ["--ray", "local"])
        print(f"ray:   {describe(report['ray'])}", flush=True)
    if "local" in report and "ray" in report:
        a, b = report["local"]["labels"], report["ray"]["labels"]
        report["same_labels"] = sum(x == y for x, y in zip(a, b))
        print(f"same label on {report['same_labels']:,} of {len(a):,} rows (identical files: {(work / 'local.jsonl').read_bytes() == (work / 'ray.jsonl').read_bytes()})")
    if "server" not in skip:
        port = free_port()
        process = serve(args.bundle_dir, port, work / "serve.log")
        try:
            asyncio.run(load(port, "Classify", texts, 8, 2.0))  # warm-up
            load_average = os.getloadavg()[0]
            server_cpu, client_cpu = process_cpu_seconds(process.pid), cpu_seconds(resource.RUSAGE_SELF)
            row = asyncio.run(load(port, "Classify", texts, 32, args.server_seconds))
            row["server_cpu_seconds"] = process_cpu_seconds(process.pid) - server_cpu
            row["client_cpu_seconds"] = cpu_seconds(resource.RUSAGE_SELF) - client_cpu
            row["rows_per_server_cpu_second"] = row["throughput"] * args.server_seconds / row["server_cpu_seconds"]
        finally:
            process.terminate()
            process.wait(timeout=60)
        row["load_average"] = load_average
        report["server_32_callers"] = row
        print(f"server, 32 callers: {row['throughput']:.1f} rows/s, {row['rows_per_server_cpu_second']:.0f} rows per server CPU-second "
              f"(client {row['client_cpu_seconds']:.0f} CPU-s; p50 {row['p50_ms']:.0f} ms, errors {row['errors']}, load {load_average:.1f})")
    for phase in ("local", "ray"):
        if phase in report:
            report[phase].pop("labels")
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {work / 'report.json'}")


if __name__ == "__main__":
    main()
