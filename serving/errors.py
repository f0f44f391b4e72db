"""One error hierarchy with HTTP statuses, and one handler turning any error into `{"error": ...}`.

Client errors are logged at INFO with the message; our own bugs at ERROR with the traceback and
a 500 whose body says nothing internal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from inference import InvalidInputError
from inference.errors import describe_problems

log = logging.getLogger("serving")


class ServingError(Exception):
    status = 500


class BadRequest(ServingError):
    status = 400


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class ModelNotReady(ServingError):
    status = 503


class InferenceTimeout(ServingError):
    status = 504


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def client_error_response(method: str, path: str, exc: Exception) -> JSONResponse:
    """The answer to a client error (ours or invalid input), logged at INFO."""
    status = exc.status if isinstance(exc, ServingError) else 400
    log.info("%s %s -> %d: %s", method, path, status, exc)
    return error_response(status, str(exc))


def internal_error_response(method: str, path: str) -> JSONResponse:
    """The answer to our own bug: logged with its traceback, nothing internal in the body."""
    log.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal server error (logged on the server)")


def install_handlers(app: FastAPI) -> None:
    async def serving_error(request: Request, exc: Exception) -> JSONResponse:
        return client_error_response(request.method, request.url.path, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, f"invalid request: {describe_problems(exc.errors())}")

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request.method, request.url.path)

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(InvalidInputError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
