"""Typed errors and the one place that turns them into HTTP answers (ARCHITECTURE.md contract 5).

Every error answers `{"success": false, "error": "<for people>", "request_id": "..."}`. Routes raise
these exceptions (or let common.preprocessing's ImageInputError through) and never build error
responses themselves; :func:`register_error_handlers` maps each type to its status here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from common.preprocessing import (
    CorruptImageError,
    ImageInputError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
)

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499


class GatewayError(Exception):
    """Base of the gateway's own errors: a status, a message for people, optional headers."""

    status_code = 500

    def __init__(
        self,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.details = dict(details or {})  # extra fields of the JSON body
        self.upstream_status: str | None = None  # the model server's gRPC status, when it caused this


class BadRequestError(GatewayError):
    """The request body is malformed (for example a broken multipart body)."""

    status_code = 400


class UnauthorizedError(GatewayError):
    """API keys are enabled and the request has no valid X-API-Key."""

    status_code = 401


class ModelVersionNotFoundError(GatewayError):
    """A request pinned a model version or label that the model server does not serve."""

    status_code = 404


class RequestTimeoutError(GatewayError):
    """The request body did not arrive within its deadline (a stalled or very slow client)."""

    status_code = 408


class UploadTooLargeError(GatewayError):
    """A file, or the whole request body, is over its byte limit."""

    status_code = 413


class TooManyFilesError(GatewayError):
    """A batch has more files than `max_batch_files`."""

    status_code = 413


class MissingFileError(GatewayError):
    """No file in the request (or the field is not a file)."""

    status_code = 422


class InvalidParameterError(GatewayError):
    """A header or query parameter has an unusable value (e.g. a non-numeric model version)."""

    status_code = 422


class ExplainUnavailableError(GatewayError):
    """?explain=true for a model version exported without the explain signature."""

    status_code = 422


class RateLimitedError(GatewayError):
    """The client used up its token bucket; Retry-After says when one token is back."""

    status_code = 429


class UpstreamError(GatewayError):
    """The model server answered, but not as the contract says (bad signature, odd outputs, ...)."""

    status_code = 502


class ModelUnavailableError(GatewayError):
    """The model server cannot be reached or the model is not loaded; answered with Retry-After."""

    status_code = 503


class ServerBusyError(GatewayError):
    """A memory budget (uploads being read, images being decoded) is spent by other requests;
    answered with Retry-After."""

    status_code = 503


class NotReadyError(ModelUnavailableError):
    """GET /ready: the model version a label resolves to is not AVAILABLE."""


class UpstreamTimeoutError(GatewayError):
    """The model server did not answer before the deadline."""

    status_code = 504


# common.preprocessing raises these for bad images: each is the client's fault, never a 500.
IMAGE_ERROR_STATUS: dict[type[ImageInputError], int] = {
    NotAnImageError: 400,
    CorruptImageError: 400,
    UnsupportedFormatError: 415,
    ImageTooLargeError: 413,
}


def status_for_image_error(error: ImageInputError) -> int:
    for error_type, status in IMAGE_ERROR_STATUS.items():
        if isinstance(error, error_type):
            return status
    return 400  # any other ImageInputError is still something wrong with the upload


def status_for(error: Exception) -> int:
    """The HTTP status of an error (also used for the per-file results of a batch)."""
    if isinstance(error, GatewayError):
        return error.status_code
    if isinstance(error, ImageInputError):
        return status_for_image_error(error)
    return 500


def error_response(
    request: Request,
    status_code: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, object] | None = None,
) -> JSONResponse:
    body = {
        **(details or {}),
        "success": False,
        "error": message,
        "request_id": getattr(request.state, "request_id", None),
    }
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


async def handle_gateway_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, GatewayError)
    if error.status_code >= 500:
        # Every 5xx the gateway answers (502/503/504) is logged with the request id, which the
        # model server logged too, and the model server's status when it caused it.
        logger.warning(
            "answered %d request_id=%s upstream_status=%s: %s",
            error.status_code,
            getattr(request.state, "request_id", None),
            error.upstream_status or "-",
            error.message,
        )
    return error_response(request, error.status_code, error.message, error.headers, error.details)


async def handle_image_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ImageInputError)
    status = status_for_image_error(error)
    request.app.state.metrics.image_errors.labels(status=str(status)).inc()
    return error_response(request, status, str(error))


async def handle_validation_error(request: Request, error: Exception) -> JSONResponse:
    # FastAPI's own parameter validation (e.g. a malformed query value): 422, in our body shape.
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
        for problem in error.errors()
    )
    return error_response(request, 422, f"invalid request: {problems}")


async def handle_http_exception(request: Request, error: Exception) -> JSONResponse:
    # Starlette's own errors (404 for unknown paths, 405 for wrong methods) in the same body shape.
    assert isinstance(error, StarletteHTTPException)
    return error_response(request, error.status_code, str(error.detail), error.headers)


async def handle_client_disconnect(request: Request, error: Exception) -> JSONResponse:
    # The client went away mid-upload: its fault, not ours. 499 (nginx's "client closed request")
    # in the access log and the metrics, outside the 5xx error ratio; nobody receives the body.
    logger.info("client disconnected before its request was read request_id=%s", request.state.request_id)
    return error_response(request, CLIENT_CLOSED_REQUEST, "the client closed the connection")


async def handle_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # A bug, not bad input: log it with the request id so it can be found, answer 500 without details.
    logger.exception("unhandled error request_id=%s", getattr(request.state, "request_id", None))
    return error_response(request, 500, "internal error")


def register_error_handlers(app: FastAPI) -> None:
    """The one place where errors become statuses."""
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(ImageInputError, handle_image_error)
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected_error)
