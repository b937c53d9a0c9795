"""Server interceptors: bearer-token check, and request ids + metrics + error mapping.

Every unary call of the protolm services passes through :class:`ObservabilityInterceptor`,
which gives it a request id (the caller's ``x-request-id`` or a new one), times it, counts it
by status code and turns exceptions into statuses via :func:`service.errors.status_for`.
Unexpected errors become INTERNAL with a generic message; the details go to the log with
the request id.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import time
import uuid

import grpc

from core.errors import ProtoLMError, UnauthenticatedError
from service.errors import status_for
from service.metrics import Metrics

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def _metadata(details) -> dict[str, str]:
    return {key.lower(): value for key, value in (details.invocation_metadata or ())}


def _rejecting_handler(handler, error: ProtoLMError):
    """A handler of the same kind as ``handler`` that only aborts with ``error``'s status."""
    code, message = status_for(error), str(error)

    async def abort_unary(request, context):
        await context.abort(code, message)

    async def abort_stream(request_or_iterator, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(abort_stream, handler.request_deserializer, handler.response_serializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>``; health checks stay open for probes."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        supplied = _metadata(handler_call_details).get("authorization", "").encode()
        if hmac.compare_digest(supplied, self._expected):
            return handler
        return _rejecting_handler(handler, UnauthenticatedError("missing or invalid bearer token"))


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, services: tuple[str, ...]):
        self.metrics = metrics
        self.prefixes = tuple(f"/{s}/" for s in services)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method
        if handler is None or not handler.unary_unary or not full_method.startswith(self.prefixes):
            return handler
        method = full_method.rsplit("/", 1)[-1]
        request_id = _metadata(handler_call_details).get("x-request-id") or uuid.uuid4().hex
        inner = handler.unary_unary

        async def observed(request, context):
            token = _request_id.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight = self.metrics.in_flight.labels(method=method)
            in_flight.inc()
            try:
                return await inner(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
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
                in_flight.dec()
                self.metrics.requests.labels(method=method, code=code.name).inc()
                self.metrics.request_duration.labels(method=method).observe(time.perf_counter() - started)
                _request_id.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
