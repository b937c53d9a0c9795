"""The gRPC server: lifecycle, health, reflection, TLS, signals and hot reload.

Start-up: listen with health NOT_SERVING, load and warm the bundle, then report SERVING.
SIGTERM: report NOT_SERVING at once and keep serving for ``drain_delay`` seconds (load
balancers and Kubernetes stop routing here meanwhile), then answer new calls UNAVAILABLE
(retryable) while every admitted call finishes, for up to ``drain_seconds``; then exit.
No admitted call ends CANCELLED. SIGINT does the same without the delay. SIGHUP (or the
admin Reload call): load the bundle again off the event loop and swap it in; a bad bundle
is logged and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.errors import ConfigError, InvalidInputError, ProtoLMError
from service import tracing
from service.config import ServerConfig
from service.engine import Engine, ServingModel
from service.grpc_api import grpc_predict_v2_pb2_grpc as oip_grpc
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.interceptors import Access, ServiceInterceptor
from service.metrics import Metrics
from service.oip_servicer import OIP_PROBES, OIP_SERVICE, InferenceServicer
from service.servicer import ProtoLMAdminServicer, ProtoLMServicer

log = logging.getLogger(__name__)
API_SERVICE = pb.DESCRIPTOR.services_by_name["ProtoLMService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["ProtoLMAdminService"].full_name
OVERALL = ""  # the health service's name for the server as a whole
QUIET_SECONDS = 0.25  # while draining, how long no call may arrive before the listener closes

ModelLoader = Callable[[str, ServerConfig], ServingModel]


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if not (config.tls_cert or config.tls_key):
        if config.tls_client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key), _read(config.tls_cert))],
        root_certificates=_read(config.tls_client_ca),
        require_client_auth=config.tls_client_ca is not None,
    )


class ProtoLMServer:
    def __init__(self, config: ServerConfig, load_model: ModelLoader | None = None, tracer: tracing.Tracer | None = None):
        if load_model is None:
            from service.loader import load_serving_model as load_model
        self.config = config
        self.bundle_dir = config.bundle_dir
        self.load_model = load_model
        self.metrics = Metrics()
        self.tracer = tracer or tracing.tracer(config.tracing)
        self.engine = Engine(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self.draining = False
        self.serving = False  # what grpc.health.v1 reports; the Open Inference Protocol's ServerReady agrees
        self.interceptor = ServiceInterceptor(
            self.metrics,
            Access(
                tokens={API_SERVICE: config.auth_token, OIP_SERVICE: config.auth_token, ADMIN_SERVICE: config.admin_token},
                default_token=config.auth_token,
                open_methods=OIP_PROBES,
            ),
            config.max_request_bytes,
            draining=lambda: self.draining,
            tracer=self.tracer,
        )

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.serving = serving
        for service in (OVERALL, API_SERVICE, OIP_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Listen (NOT_SERVING), load and warm the model, then report SERVING."""
        # gRPC's own limit sits above ours, so an oversized call gets our counted answer
        server = grpc.aio.server(
            interceptors=[self.interceptor],
            # no SO_REUSEPORT: a second server on a taken port must fail, not share its calls
            options=[("grpc.max_receive_message_length", 2 * self.config.max_request_bytes), ("grpc.so_reuseport", 0)],
        )
        pb_grpc.add_ProtoLMServiceServicer_to_server(ProtoLMServicer(self.engine), server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.engine, ready=lambda: self.serving), server)
        names = [API_SERVICE, OIP_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        if self.config.admin_token or self.config.admin_without_token:
            pb_grpc.add_ProtoLMAdminServiceServicer_to_server(ProtoLMAdminServicer(self.engine, self.reload), server)
            names.append(ADMIN_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.config.reflection:
            reflection.enable_server_reflection(names, server)
        address = f"{self.config.host}:{self.config.port}"
        self.port = self._bind(server, address)
        if self.config.metrics_port >= 0:  # before the gRPC server runs: a taken port stops nothing started
            self.metrics_port = self.metrics.serve(
                self.config.metrics_host or self.config.host,
                self.config.metrics_port,
                certfile=self.config.tls_cert,
                keyfile=self.config.tls_key,
                client_cafile=self.config.tls_client_ca,
            )
        await self._set_health(False)
        await server.start()
        self._server = server
        log.debug("bound %s (port %d), NOT_SERVING while the model loads", address, self.port)
        await self.engine.activate(lambda: self.load_model(self.bundle_dir, self.config))
        metrics = f"metrics on port {self.metrics_port}" if self.metrics_port is not None else "no metrics endpoint"
        log.info("listening on %s (port %d), %s", address, self.port, metrics)
        await self._set_health(True)
        log.info("SERVING")

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        """The port bound; a taken port or an address that is not this machine's is a one-line error."""
        credentials = server_credentials(self.config)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises on a failed bind (older releases returned 0)
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {address}: the port is taken (another protolm serve?) or the address is not this machine's")
        return port

    def _reload_target(self, bundle_dir: str | None) -> str:
        """The bundle a Reload asks for, which must lie under the bundle root; the answer
        says nothing about paths outside it."""
        if bundle_dir is None:
            return self.bundle_dir
        root = Path(self.config.bundle_root or Path(self.config.bundle_dir).parent).resolve()
        target = (root / bundle_dir).resolve()
        if (target != root and root not in target.parents) or not target.is_dir():
            raise InvalidInputError(f"bundle_dir {bundle_dir!r} is not a bundle directory under the server's bundle root")
        return str(target)

    async def reload(self, bundle_dir: str | None = None) -> None:
        """Swap in a freshly loaded bundle; on failure, keep serving the current one and raise.

        The reload runs to its end even when the caller gives up (deadline, cancel): a
        model half-loaded is never left behind, and the outcome is logged either way."""
        target = self._reload_target(bundle_dir)
        task = asyncio.ensure_future(self._reload(target))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # logged in _reload
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("the caller of the reload of %s went away; the reload goes on and its outcome is logged", target)
            raise

    async def _reload(self, target: str) -> None:
        try:
            await self.engine.activate(lambda: self.load_model(target, self.config))
        except Exception as exc:
            self.metrics.reloads.labels(result="failed").inc()
            if isinstance(exc, ProtoLMError):
                log.error("reload of %s failed, still serving the previous model: %s", target, exc)
            else:  # a bug: the caller gets INTERNAL, the log the traceback
                log.exception("reload of %s failed unexpectedly, still serving the previous model", target)
            raise
        self.bundle_dir = target
        self.metrics.reloads.labels(result="ok").inc()
        log.info("reloaded %s", target)

    async def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """NOT_SERVING at once; keep serving for ``drain_delay`` seconds; then refuse new
        calls with UNAVAILABLE and let every admitted call finish within ``grace`` seconds."""
        grace = self.config.drain_seconds if grace is None else grace
        await self._set_health(False)
        if drain_delay > 0:
            log.info("NOT_SERVING; still serving for %.1fs while load balancers catch up", drain_delay)
            await asyncio.sleep(drain_delay)  # the delay is the point: traffic keeps being served
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Every admitted call finishes; calls still arriving hear UNAVAILABLE from the
        # interceptor. gRPC cancels calls it has received but not yet handed to a handler
        # when it stops, so it stops only once calls have stopped arriving for a moment.
        while not self.interceptor.quiet_for(QUIET_SECONDS) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.interceptor.in_flight:
            log.warning("%d calls still running after %.1fs of draining; they are cut off", self.interceptor.in_flight, grace)
        if self._server is not None:
            await self._server.stop(max(deadline - loop.time(), 1.0))
        await self.engine.stop(drain_seconds=0)
        self.metrics.close()
        await loop.run_in_executor(None, self.tracer.close)  # sends the spans still buffered
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the bundle."""
    server = ProtoLMServer(config)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_stop(drain_delay: float) -> None:
        if not stopping:
            log.info("draining (delay %.0fs, then up to %.0fs)", drain_delay, config.drain_seconds)
            stopping.append(loop.create_task(server.stop(drain_delay=drain_delay)))

    def on_reload() -> None:
        async def run() -> None:
            try:
                await server.reload()
            except Exception:
                pass  # reload logged it; the previous model is still serving

        loop.create_task(run())

    loop.add_signal_handler(signal.SIGTERM, on_stop, config.drain_delay)
    loop.add_signal_handler(signal.SIGINT, on_stop, 0.0)  # Ctrl-C: someone is waiting at a terminal
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await server.start()
    except BaseException:
        await server.stop(grace=0)
        raise
    await server.wait()
