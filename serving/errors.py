"""Typed errors of the local model server, each carrying TF Serving's status code.

Everything below the API layer raises these; `grpc_api` aborts the call with `code` and
`rest_api` answers `{"error": message}` with :func:`http_status`, the one place where a
status becomes an HTTP code (the same table as TF Serving's REST handler).
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request or load failed; `message` is what the client sees (TF Serving's wording where it has one)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code_name(self) -> str:
        """TF's error code name (`INVALID_ARGUMENT`), as metrics and status JSON print it."""
        return self.code.name

    @property
    def code_number(self) -> int:
        """TF's numeric `error.Code` (same numbering as gRPC), for StatusProto.error_code."""
        number: int = self.code.value[0]
        return number


class InvalidArgumentError(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDeniedError(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnavailableError(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class UnimplementedError(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceededError(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(ServingError):
    code = grpc.StatusCode.INTERNAL


class DataLossError(ServingError):
    code = grpc.StatusCode.DATA_LOSS


# TF Serving's ToHTTPStatusCode (model_servers/http_rest_api_handler), so REST clients see the same codes.
_HTTP_STATUS_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(error: ServingError) -> int:
    return _HTTP_STATUS_BY_CODE.get(error.code, 500)
