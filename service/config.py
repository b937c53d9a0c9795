"""The server's and the client commands' configuration: frozen objects, every field a flag and a PROTOLM_* variable."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError
from core.options import option


@dataclass(frozen=True)
class ServerConfig:
    bundle_dir: str = option("", "serving bundle directory written by `protolm export`")
    host: str = option("[::]", "address to listen on")
    port: int = option(50051, "gRPC port (0 picks a free one)")
    metrics_port: int = option(9464, "Prometheus /metrics HTTP port (0 picks a free one; -1 disables); not 9090, Prometheus's own")
    metrics_host: str | None = option(None, "address the /metrics server listens on; default: --host. It uses the gRPC port's TLS settings")
    device: str = option("auto", "auto (GPU when ONNX Runtime has CUDA), cpu or gpu", choices=("auto", "cpu", "gpu"))
    variant: str | None = option(None, "bundle variant to serve (fp32, optimized, int8, fp16); default: best servable for the device")
    intra_op_threads: int = option(0, "ONNX Runtime threads inside one operator (0: one per core)")
    inter_op_threads: int = option(1, "ONNX Runtime threads across operators")
    max_batch_size: int = option(32, "most inputs in one forward pass")
    max_batch_tokens: int = option(8192, "most padded tokens (batch size x longest input) in one forward pass")
    max_padding: float = option(0.15, "largest share of a batch's tokens that may be padding; longer inputs start a new batch")
    max_wait_ms: float = option(5.0, "longest the oldest queued input waits for others to fill its batch (right after a batch: only until the callers it answered are back)")
    max_queue_size: int = option(1024, "queued inputs beyond which requests are rejected with RESOURCE_EXHAUSTED")
    max_inputs_per_request: int = option(64, "most inputs in one Classify or Explain call")
    max_text_chars: int = option(10000, "longest text (or text_pair) accepted, in characters; token overflow is truncated instead")
    max_top_prototypes: int = option(50, "most prototypes one Explain input may ask for")
    max_nearest_examples: int = option(50, "most nearest training examples one Explain input may ask for")
    drain_delay: float = option(5.0, "on SIGTERM, seconds to keep serving while health reports NOT_SERVING, so load balancers and Kubernetes stop sending calls here before new ones are refused")
    drain_seconds: float = option(20.0, "after the drain delay, how long admitted calls may take to finish (new calls get UNAVAILABLE)")
    tls_cert: str | None = option(None, "PEM server certificate; with --tls-key enables TLS")
    tls_key: str | None = option(None, "PEM private key of the server certificate")
    tls_client_ca: str | None = option(None, "PEM CA bundle; when set, clients must present a certificate it signed")
    auth_token: str | None = option(None, "when set, every call must carry `authorization: Bearer <token>` (health checks stay open)")
    admin_token: str | None = option(None, "bearer token of the admin service (Reload); without it the admin service is off")
    admin_without_token: bool = option(False, "serve the admin service without a token; only allowed when --host is a loopback address")
    bundle_root: str | None = option(None, "Reload(bundle_dir) loads only bundles under this directory; default: the parent of --bundle-dir")
    max_request_bytes: int = option(4 << 20, "largest request accepted, in bytes (RESOURCE_EXHAUSTED beyond)")
    reflection: bool = option(True, "enable gRPC server reflection (grpcurl works without the proto)")
    tracing: bool = option(False, "OpenTelemetry spans of every call (needs protolm[tracing]); exporter, endpoint, sampler and service name come from the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME...)")

    def __post_init__(self) -> None:
        if self.admin_without_token and not is_loopback(self.host):
            raise ConfigError(f"--admin-without-token needs a loopback --host, not {self.host!r}: set --admin-token instead")
        if self.max_inputs_per_request > self.max_queue_size:
            raise ConfigError(
                f"--max-inputs-per-request {self.max_inputs_per_request} is above --max-queue-size {self.max_queue_size}: "
                "such a request could never be queued"
            )

    @property
    def max_wait_seconds(self) -> float:
        return self.max_wait_ms / 1000.0


@dataclass(frozen=True)
class ClientConfig:
    """How `protolm classify`, `health` and `explain HOST:PORT` reach a server."""

    server: str = option("localhost:50051", "server address HOST:PORT")
    token: str | None = option(None, "bearer token sent with every call", env="PROTOLM_CLIENT_TOKEN")
    tls_ca: str | None = option(None, "PEM CA certificate that signed the server's certificate (enables TLS)", env="PROTOLM_CLIENT_TLS_CA")
    timeout: float = option(30.0, "seconds to wait for the reply", env="PROTOLM_CLIENT_TIMEOUT")


def is_loopback(host: str) -> bool:
    import ipaddress

    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


INPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def file_format(path: str, formats: dict[str, str], what: str) -> str:
    """The format of ``path`` from its extension (a ``.gz`` on CSV, TSV or JSONL is read through gzip)."""
    from pathlib import PurePath

    suffixes = [s.lower() for s in PurePath(path).suffixes]
    if suffixes and suffixes[-1] == ".gz" and what == "input":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in formats:
        raise ConfigError(f"{path}: cannot tell the {what} format from the name; use one of {', '.join(formats)}")
    return formats[suffixes[-1]]


@dataclass(frozen=True)
class PredictConfig:
    """`protolm predict`: a file of texts through a bundle, on this machine or a Ray cluster."""

    bundle_dir: str = option("", "serving bundle directory written by `protolm export`")
    input: str = option("", "CSV, TSV, JSONL or Parquet file to classify (CSV/TSV/JSONL may be gzipped)")
    output: str = option("", "where the predictions go: .jsonl or .parquet")
    text_column: str = option("text", "input column holding the text")
    pair_column: str | None = option(None, "input column holding the second text of a pair model; default: text_pair for pair bundles")
    id_column: str | None = option(None, "input column copied to each prediction as `id`")
    explain: bool = option(False, "add each row's top words, evidence (the prototypes that decided the margin) and nearest prototypes with their exemplars")
    top_words: int = option(5, "with --explain: words kept per row, highest attention first")
    top_prototypes: int = option(3, "with --explain: prototypes kept per row, and supporting / opposing evidence each way")
    nearest_examples: int = option(0, "with --explain: nearest training examples per row (0: none)")
    skip_bad_rows: bool = option(False, "record a bad row (missing, empty or non-text) as an `error` line and go on, instead of stopping at it")
    overwrite: bool = option(False, "start the output afresh instead of resuming after the rows it already holds", env="PROTOLM_PREDICT_OVERWRITE")
    window: int = option(2048, "rows read, tokenised and sorted by length together (a Ray actor's batch)", env="PROTOLM_PREDICT_WINDOW")
    workers: int = option(2, "windows in flight at once in this process (one's tokenising overlaps another's forward passes)", env="PROTOLM_PREDICT_WORKERS")
    max_batch_size: int = option(64, "most inputs in one forward pass", env="PROTOLM_PREDICT_MAX_BATCH_SIZE")
    max_batch_tokens: int = option(8192, "most padded tokens (batch size x longest input) in one forward pass", env="PROTOLM_PREDICT_MAX_BATCH_TOKENS")
    max_padding: float = option(0.25, "largest share of a batch's tokens that may be padding; longer inputs start a new batch", env="PROTOLM_PREDICT_MAX_PADDING")
    device: str = option("auto", "auto (GPU when ONNX Runtime has CUDA), cpu or gpu", choices=("auto", "cpu", "gpu"))
    variant: str | None = option(None, "bundle variant to run (fp32, optimized, int8, fp16); default: best servable for the device")
    intra_op_threads: int = option(0, "ONNX Runtime threads inside one operator (0: the cores divided among --workers; on Ray: the actor's CPUs)")
    progress: bool = option(True, "show progress on stderr")
    ray: str | None = option(None, "run on Ray through Ray Data: `auto` (the cluster `ray start` made), `local` (start one here) or an address such as ray://head:10001")
    ray_actors: int = option(0, "Ray actors, each holding one bundle (0: one per --ray-cpus-per-actor CPUs of the cluster)")
    ray_cpus_per_actor: float = option(1.0, "CPUs each Ray actor reserves (and ONNX Runtime threads it runs)")

    def __post_init__(self) -> None:
        for name in ("window", "workers", "max_batch_size", "max_batch_tokens", "top_words", "top_prototypes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.nearest_examples < 0 or self.ray_actors < 0 or self.ray_cpus_per_actor <= 0:
            raise ConfigError("--nearest-examples and --ray-actors must be 0 or more, --ray-cpus-per-actor above 0")
