"""One handler turning any error (`serving.core.errors`, invalid input, a bug) into
`{"error": ...}`.

Client errors are logged at INFO with the message; our own bugs at ERROR with the traceback and
a 500 whose body says nothing internal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from inference import InvalidInputError
from inference.errors import describe_problems
from serving.core.errors import ServingError

log = logging.getLogger("serving")


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def client_error_response(method: str, path: str, exc: Exception) -> JSONResponse:
    """The answer to a client error (ours or invalid input), logged at INFO."""
    status = exc.status if isinstance(exc, ServingError) else 400
    log.log(
        logging.WARNING if status == 500 else logging.INFO,
        "%s %s -> %d: %s",
        method,
        path,
        status,
        exc,
    )
    return error_response(status, str(exc))


def internal_error_response(method: str, path: str) -> JSONResponse:
    """The answer to our own bug: logged with its traceback, nothing internal in the body."""
    log.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal server error (logged on the server)")


ROUTE_MISTAKES = (
    (re.compile(r"^/v1/models/([^/:]+)/predict$"), "/v1/models/{}:predict"),
    (
        re.compile(r"^/v1/models/([^/:]+)/versions/([^/:]+)/predict$"),
        "/v1/models/{}/versions/{}:predict",
    ),
    (re.compile(r"^/v2/models/([^/:]+):infer$"), "/v2/models/{}/infer"),
    (re.compile(r"^/v2/models/([^/:]+)/predict$"), "/v2/models/{}/infer"),
)
"""Paths people write for the predict routes, and the route they meant."""


def route_hint(path: str) -> str:
    """'; did you mean ...' for a near miss of a predict route, else a pointer to the docs."""
    for pattern, meant in ROUTE_MISTAKES:
        match = pattern.match(path)
        if match:
            return f"; did you mean POST {meant.format(*match.groups())}?"
    return "; the routes are listed at /docs"


def install_handlers(app: FastAPI) -> None:
    async def serving_error(request: Request, exc: Exception) -> JSONResponse:
        return client_error_response(request.method, request.url.path, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        detail = str(exc.detail)
        method, path = request.method, request.url.path
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {method} {path}{route_hint(path)}"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{method} is not allowed on {path}{route_hint(path)}"
        return error_response(exc.status_code, detail, exc.headers)

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
