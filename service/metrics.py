"""Prometheus metrics, in base units (seconds), on their own registry and HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core.errors import ConfigError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024
BATCH_TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 17))  # 16 .. 65536


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("protolm_requests", "RPCs handled, by method and status code", ["method", "code"], registry=r)
        self.request_duration = Histogram(
            "protolm_request_duration_seconds", "RPC duration from receipt to reply", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            "protolm_queue_duration_seconds", "time an input waited for its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "protolm_inference_duration_seconds", "forward pass duration per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("protolm_batch_size", "inputs per forward pass", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "protolm_batch_tokens", "padded tokens (batch size x longest input) per forward pass", buckets=BATCH_TOKEN_BUCKETS, registry=r
        )
        self.batch_real_tokens = Histogram(
            "protolm_batch_real_tokens",
            "the inputs' own tokens per forward pass (padding excluded); 1 - its sum / protolm_batch_tokens' sum is the share of padding",
            buckets=BATCH_TOKEN_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("protolm_queue_depth", "inputs waiting for a batch", registry=r)
        self.in_flight = Gauge("protolm_requests_in_flight", "RPCs being handled", ["method"], registry=r)
        self.inputs = Counter("protolm_inputs", "inputs classified, by method", ["method"], registry=r)
        self.truncated_inputs = Counter("protolm_truncated_inputs", "inputs cut to the model's max_length", registry=r)
        self.reloads = Counter("protolm_reloads", "bundle reloads, by result", ["result"], registry=r)
        self.model_info = Gauge(
            "protolm_model_info", "the model being served (value 1)", ["name", "version", "variant", "provider"], registry=r
        )
        self._http_server = None

    def record_batch(self, stats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)
        self.batch_real_tokens.observe(stats.real_tokens)
        self.inference_duration.observe(stats.seconds)

    def set_model(self, name: str, version: str, variant: str, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, variant=variant, provider=provider).set(1)

    def serve(self, host: str, port: int, certfile: str | None = None, keyfile: str | None = None, client_cafile: str | None = None) -> int:
        """Starts the /metrics HTTP server (HTTPS with a certificate; client certificates
        required with a client CA, as on the gRPC port); returns the port it got."""
        try:
            server, _ = start_http_server(
                port, addr=host.strip("[]"), registry=self.registry, certfile=certfile, keyfile=keyfile,
                client_cafile=client_cafile, client_auth_required=client_cafile is not None,
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (--metrics-port -1 turns them off)") from None
        self._http_server = server
        return server.server_port

    def close(self) -> None:
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
