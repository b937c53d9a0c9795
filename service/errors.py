"""The one place where the project's exceptions become gRPC status codes."""

from __future__ import annotations

import grpc

from core.errors import (
    BundleError,
    ConfigError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    ProtoLMError,
    UnauthenticatedError,
)

STATUS_CODES: tuple[tuple[type[ProtoLMError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code of an error; anything unexpected is INTERNAL."""
    for error_type, code in STATUS_CODES:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL
