"""The one server interceptor: authentication, request ids, decoding, metrics and error mapping.

Every unary call of the protolm services passes through :class:`ServiceInterceptor` with its
request still in bytes. In order: a request id (the caller's ``x-request-id`` or a new one);
the bearer token of its service (before anything is parsed, so an unauthenticated caller
costs nothing and fills no log); refusal while the server drains; the size limit; decoding
(malformed bytes are INVALID_ARGUMENT with a plain message and one rate-limited log line);
then the servicer. Each call is counted by its final status code, exceptions become codes
through :func:`service.errors.status_for`, and unexpected errors become INTERNAL with a
generic message while the details go to the log with the request id. Health checks (and the
probes in ``Access.open_methods``) pass untouched: probes need no token; other services
(reflection) get the token check only.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import grpc

from core.errors import InvalidInputError, NotReadyError, OverloadedError, UnauthenticatedError
from service.errors import status_for
from service.metrics import Metrics
from service.tracing import NO_CALL, Tracer

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DECODE_ON_LOOP_BYTES = 64 << 10
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def _metadata(details) -> dict[str, str]:
    return {key.lower(): value for key, value in (details.invocation_metadata or ())}


def bearer_matches(header: str, token: str) -> bool:
    """``authorization: Bearer <token>``; the scheme is case-insensitive (RFC 6750, RFC 9110)."""
    scheme, _, supplied = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


class RateLimitedLog:
    """At most one line per ``interval`` seconds; the lines held back are counted in the next."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.logger, self.interval = logger, interval
        self._last, self._held = -interval, 0

    def warning(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        self.logger.warning(message + (f" ({held} more since the last such line)" if held else ""), *args)


@dataclass(frozen=True)
class Access:
    """Which services the interceptor guards and with which token (None: open)."""

    tokens: dict[str, str | None]  # full service name -> token
    default_token: str | None  # for other services (reflection); health is always open
    open_methods: frozenset[str] = frozenset()  # other probes that pass untouched, like health's


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, access: Access, max_request_bytes: int, draining: Callable[[], bool], tracer: Tracer | None = None):
        self.metrics = metrics
        self.tracer = tracer or Tracer()
        self.access = access
        self.max_request_bytes = max_request_bytes
        self.draining = draining
        self.in_flight = 0
        self.last_arrival = time.monotonic()
        self._malformed_log = RateLimitedLog(log)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method
        if handler is None or full_method.startswith(HEALTH_PREFIX) or full_method in self.access.open_methods:
            return handler
        service = full_method[1:].rsplit("/", 1)[0]
        if service not in self.access.tokens:
            return self._token_gate(handler, handler_call_details, self.access.default_token)
        if not handler.unary_unary:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._observed(handler, handler_call_details, self.access.tokens[service]),
            request_deserializer=None,  # bytes in: decoded below, after the token check
            response_serializer=handler.response_serializer,
        )

    def _authenticate(self, details, token: str | None) -> None:
        if token is not None and not bearer_matches(_metadata(details).get("authorization", ""), token):
            raise UnauthenticatedError("missing or invalid bearer token")

    def _token_gate(self, handler, details, token: str | None):
        try:
            self._authenticate(details, token)
        except UnauthenticatedError as error:
            return _rejecting_handler(handler, status_for(error), str(error))
        return handler

    def _observed(self, handler, details, token: str | None):
        method = details.method.rsplit("/", 1)[-1]
        metadata = _metadata(details)
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        inner, decode = handler.unary_unary, handler.request_deserializer

        async def observed(raw: bytes, context):
            request_token = _request_id.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight = self.metrics.in_flight.labels(method=method)
            in_flight.inc()
            self._enter()
            call = NO_CALL
            try:
                self._authenticate(details, token)
                call = self.tracer.start_call(details.method, metadata, request_id)  # after the token: an unauthenticated caller costs nothing
                if self.draining():
                    raise NotReadyError("the server is shutting down; retry on another replica")
                if len(raw) > self.max_request_bytes:
                    raise OverloadedError(f"request of {len(raw):,} bytes; the limit is {self.max_request_bytes:,}")
                try:
                    # a large request is parsed off the event loop, like its tokenising
                    request = decode(raw) if len(raw) < DECODE_ON_LOOP_BYTES else await asyncio.get_running_loop().run_in_executor(None, decode, raw)
                except Exception:  # protobuf's DecodeError, or invalid UTF-8 in a string field
                    self._malformed_log.warning("request %s: %s sent bytes that are not a valid request", request_id, method)
                    raise InvalidInputError(f"malformed request: the bytes are not a valid {method} request message") from None
                return await inner(request, context)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("request %s: %s failed", request_id, method)
                    message = f"internal error (request id {request_id})"
                else:
                    message = str(exc)
                await context.abort(code, message)
            finally:
                call.end(code)
                self._leave()
                in_flight.dec()
                self.metrics.requests.labels(method=method, code=code.name).inc()
                self.metrics.request_duration.labels(method=method).observe(time.perf_counter() - started)
                _request_id.reset(request_token)

        return observed

    def _enter(self) -> None:
        self.in_flight += 1
        self.last_arrival = time.monotonic()

    def _leave(self) -> None:
        self.in_flight -= 1

    def quiet_for(self, seconds: float) -> bool:
        """No call running, and none arrived for ``seconds``."""
        return self.in_flight == 0 and time.monotonic() - self.last_arrival >= seconds


def _rejecting_handler(handler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as ``handler`` that aborts without reading the request."""

    async def abort_unary(request, context):
        await context.abort(code, message)

    async def abort_stream(request_or_iterator, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, None, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, None, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, None, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(abort_stream, None, handler.response_serializer)
