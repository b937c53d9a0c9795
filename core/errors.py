"""The project's one exception hierarchy.

Training, export and serving raise these; the gRPC layer maps them to status codes in a
single place (``service.errors``), where anything outside this hierarchy is a bug and becomes
INTERNAL. Standard library only, so every side can import it.
"""


class ProtoLMError(Exception):
    """Base class: every error the project raises on purpose."""

    exit_code = 2  # the CLI's exit status for it (README, "Exit codes")


class ConfigError(ProtoLMError):
    """An option or combination of options that cannot work."""


class DataError(ProtoLMError):
    """Input data that cannot be used: missing file or column, unknown label, empty split."""


class BundleError(ProtoLMError):
    """A serving bundle that is missing, corrupt or of an unsupported format version."""

    exit_code = 3


class InvalidInputError(ProtoLMError):
    """A request the service cannot answer because of what the caller sent."""


class NotFoundError(ProtoLMError):
    """A model (or model version) the server does not serve."""


class OverloadedError(ProtoLMError):
    """The service is at capacity and rejects work instead of queueing it without bound."""


class NotReadyError(ProtoLMError):
    """The service is starting, reloading or draining and cannot take the request."""


class DeadlineExceededError(ProtoLMError):
    """The caller's deadline passed while its input was still queued."""


class UnauthenticatedError(ProtoLMError):
    """A missing or wrong bearer token."""


# A failed call's exit status by its gRPC status code; any other code (INTERNAL, ...) is 8.
REMOTE_EXIT_CODES = {
    "UNAVAILABLE": 4,  # no server there, or it is starting or draining
    "INVALID_ARGUMENT": 5,  # the server refused the request as sent
    "NOT_FOUND": 5,
    "RESOURCE_EXHAUSTED": 6,  # overloaded or too slow: try again later
    "DEADLINE_EXCEEDED": 6,
    "UNAUTHENTICATED": 7,
    "PERMISSION_DENIED": 7,
}


class RemoteError(ProtoLMError):
    """A call the client made to a protolm server failed (client side only: the server
    never raises it); the message names the server, the status code and its details."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code

    @property
    def exit_code(self) -> int:
        return REMOTE_EXIT_CODES.get(self.code, 8)
