"""The gRPC server: lifecycle, health, reflection, TLS, signals and hot reload.

Start-up: listen with health NOT_SERVING, load and warm the bundle, then report SERVING.
SIGTERM/SIGINT: report NOT_SERVING, stop taking new calls, let in-flight calls finish for
up to ``drain_seconds``, exit. SIGHUP (or the admin Reload call): load the bundle again off
the event loop and swap it in; a bad bundle is logged and the old model keeps serving.
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

from core.errors import ConfigError, ProtoLMError
from service.config import ServerConfig
from service.engine import Engine, ServingModel
from service.grpc_api import protolm_pb2 as pb
from service.grpc_api import protolm_pb2_grpc as pb_grpc
from service.interceptors import BearerTokenInterceptor, ObservabilityInterceptor
from service.metrics import Metrics
from service.servicer import ProtoLMAdminServicer, ProtoLMServicer

log = logging.getLogger(__name__)
API_SERVICE = pb.DESCRIPTOR.services_by_name["ProtoLMService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["ProtoLMAdminService"].full_name
OVERALL = ""  # the health service's name for the server as a whole

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
    def __init__(self, config: ServerConfig, load_model: ModelLoader | None = None):
        if load_model is None:
            from service.loader import load_serving_model as load_model
        self.config = config
        self.bundle_dir = config.bundle_dir
        self.load_model = load_model
        self.metrics = Metrics()
        self.engine = Engine(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in (OVERALL, API_SERVICE):
            await self.health.set(service, status)

    async def start(self) -> None:
        """Listen (NOT_SERVING), load and warm the model, then report SERVING."""
        interceptors = [ObservabilityInterceptor(self.metrics, (API_SERVICE, ADMIN_SERVICE))]
        if self.config.auth_token:
            interceptors.insert(0, BearerTokenInterceptor(self.config.auth_token))
        server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_ProtoLMServiceServicer_to_server(ProtoLMServicer(self.engine), server)
        pb_grpc.add_ProtoLMAdminServiceServicer_to_server(ProtoLMAdminServicer(self.engine, self.reload), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.config.reflection:
            names = (API_SERVICE, ADMIN_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        address = f"{self.config.host}:{self.config.port}"
        credentials = server_credentials(self.config)
        self.port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if self.port == 0:
            raise ConfigError(f"cannot listen on {address}")
        await self._set_health(False)
        await server.start()
        self._server = server
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
        log.info("listening on %s (port %d), metrics on port %s", address, self.port, self.metrics_port)
        await self.engine.activate(lambda: self.load_model(self.bundle_dir, self.config))
        await self._set_health(True)
        log.info("SERVING")

    async def reload(self, bundle_dir: str | None = None) -> None:
        """Swap in a freshly loaded bundle; on failure, keep serving the current one and raise."""
        target = bundle_dir or self.bundle_dir
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

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, finish in-flight ones within ``grace`` seconds."""
        grace = self.config.drain_seconds if grace is None else grace
        await self._set_health(False)
        if self._server is not None:
            await self._server.stop(grace)
        await self.engine.stop(drain_seconds=0)
        self.metrics.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the bundle."""
    server = ProtoLMServer(config)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_stop() -> None:
        if not stopping:
            log.info("draining (up to %.0fs)", config.drain_seconds)
            stopping.append(loop.create_task(server.stop()))

    def on_reload() -> None:
        async def run() -> None:
            try:
                await server.reload()
            except Exception:
                pass  # reload logged it; the previous model is still serving

        loop.create_task(run())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await server.start()
    except BaseException:
        await server.stop(grace=0)
        raise
    await server.wait()
