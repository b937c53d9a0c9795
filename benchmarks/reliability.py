"""Reliability figures of the server under abuse, printed side by side in one run.

A real `ProtoLMServer` on a loopback port in its own process (the callers run in this one),
with the deterministic fake backend (the model's cost is not what is measured here) and the
real MiniLM tokenizer:

1. four Classify calls of 64 x 10,000 CJK characters in flight: latency of health checks and
   of a one-sentence Classify meanwhile;
2. a burst of 300 one-input calls against a full queue: how fast RESOURCE_EXHAUSTED comes back;
3. shutdown (what SIGTERM runs) with 32 looping callers, three times: the calls' final codes,
   and how long NOT_SERVING was visible while calls were still served.

    python benchmarks/reliability.py
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.backend import FakeBackend  # noqa: E402
from service.grpc_api import protolm_pb2 as pb  # noqa: E402
from service.grpc_api import protolm_pb2_grpc as pb_grpc  # noqa: E402
from tests.service_helpers import HeldBackend, fake_model, running_server, server_config  # noqa: E402

CJK = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(10_000))


def request(*texts: str) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(inputs=[pb.TextInput(text=t) for t in texts])


def milliseconds(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms   max {ordered[-1] * 1000:6.1f} ms   (n={len(ordered)})"


def serve(connection, overrides: dict, held: bool) -> None:
    """The server process: reports its port, then obeys "release" and "stop DELAY"."""

    async def run() -> None:
        backend = HeldBackend(num_classes=2, num_prototypes=4) if held else FakeBackend(delay_seconds=0.002)
        async with running_server(server_config(**overrides), lambda path, cfg: fake_model(cfg, backend)) as server:
            connection.send(server.port)
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, connection.recv)
                if command == "release":
                    backend.release.set()
                elif command.startswith("stop"):
                    await server.stop(drain_delay=float(command.split()[1]))
                    connection.send("stopped")
                    return

    asyncio.run(run())


class ServerProcess:
    def __init__(self, held: bool = False, **overrides):
        self.connection, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=serve, args=(child, overrides, held), daemon=True)

    def __enter__(self):
        self.process.start()
        self.port = self.connection.recv()
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.join()


async def until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "never reached the expected state"
        await asyncio.sleep(0.01)


async def huge_requests() -> None:
    with ServerProcess(max_inputs_per_request=64, max_text_chars=10_000, max_wait_ms=1.0) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 8 << 20)])
        api, health = pb_grpc.ProtoLMServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        await api.Classify(request("warm-up"), timeout=30)
        health_times, classify_times = [], []
        for _ in range(5):
            calls = [asyncio.ensure_future(api.Classify(request(*[CJK] * 64), timeout=120)) for _ in range(4)]
            while not all(c.done() for c in calls):
                started = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                health_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                await api.Classify(request("a fine film"), timeout=10)
                classify_times.append(time.perf_counter() - started)
            await asyncio.gather(*calls)
        print("1. four 64 x 10,000-character CJK Classify calls in flight (five rounds)")
        print(f"   health check          {milliseconds(health_times)}")
        print(f"   one-sentence Classify {milliseconds(classify_times)}")
        await channel.close()


async def queue_full_burst() -> None:
    with ServerProcess(held=True, max_queue_size=8, max_inputs_per_request=8, max_batch_size=1, max_wait_ms=0.0) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api = pb_grpc.ProtoLMServiceStub(channel)
        held = [asyncio.ensure_future(api.Classify(request(f"held {i}"))) for i in range(9)]  # one in the model, eight queued

        async def rejected() -> float | None:
            started = time.perf_counter()
            try:
                await api.Classify(request("one too many"), timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return time.perf_counter() - started
                raise
            raise AssertionError("a call was admitted to a full queue")

        await asyncio.sleep(0.5)  # let the nine calls reach the server: the queue is now full
        times = []
        for _ in range(3):
            times += await asyncio.gather(*(rejected() for _ in range(100)))
        server.connection.send("release")
        await asyncio.gather(*held)
        print("2. a burst of 300 calls (three waves of 100) against a full queue: RESOURCE_EXHAUSTED")
        print(f"   rejection             {milliseconds(times)}")
        await channel.close()


async def shutdown(run: int) -> None:
    with ServerProcess(max_wait_ms=1.0, drain_seconds=10.0) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        api, health = pb_grpc.ProtoLMServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        outcomes: list[tuple[str, float]] = []

        async def caller() -> None:
            while True:
                try:
                    await api.Classify(request("steady traffic"), timeout=10)
                    outcomes.append(("OK", time.perf_counter()))
                except grpc.aio.AioRpcError as error:
                    outcomes.append((error.code().name, time.perf_counter()))
                    return

        callers = [asyncio.ensure_future(caller()) for _ in range(32)]
        await until(lambda: len(outcomes) >= 200)
        started = time.perf_counter()
        server.connection.send("stop 1.0")
        not_serving = []
        while not any(code == "UNAVAILABLE" for code, _ in outcomes):
            try:
                status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
            except grpc.aio.AioRpcError:
                break
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                not_serving.append(time.perf_counter() - started)
        await asyncio.gather(*callers)
        codes = Counter(code for code, _ in outcomes)
        served_in_delay = sum(1 for code, at in outcomes if code == "OK" and at > started)
        print(f"3. shutdown run {run}: {dict(codes)}; NOT_SERVING seen from {not_serving[0] * 1000:.0f} ms to "
              f"{not_serving[-1] * 1000:.0f} ms of a 1,000 ms drain delay; {served_in_delay} calls served after the signal")
        await channel.close()


async def main() -> None:
    await huge_requests()
    await queue_full_burst()
    for run in range(1, 4):
        await shutdown(run)


if __name__ == "__main__":
    asyncio.run(main())
