"""Protection below the routes: a request body limit and an optional API key.

Both are plain ASGI so they cost nothing per request beyond a header look-up, and both answer
in the same `{"error": ...}` shape as every route.
"""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.core.errors import PayloadTooLarge
from serving.http.errors import error_response

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Probes must work without credentials."""


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit; for a streamed body, stop reading."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_too_large(scope, self.limit)
        if declared is not None:
            await error_response(413, declared)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise PayloadTooLarge(too_large(received, self.limit))
            return message

        await self.app(scope, counting_receive, send)


def declared_too_large(scope: Scope, limit: int) -> str | None:
    """The 413 message when the request declares a Content-Length over `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return too_large(int(declared), limit)
    return None


def too_large(size: int, limit: int) -> str:
    return f"the request body ({size} bytes or more) exceeds the limit of {limit} bytes"


class ApiKeyMiddleware:
    """Every route but the health probes needs `Authorization: Bearer <key>` or `X-API-Key`."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or key_allowed(scope, self.key):
            await self.app(scope, receive, send)
            return
        await unauthorized()(scope, receive, send)


def key_allowed(scope: Scope, key: bytes) -> bool:
    offered = header(scope, b"x-api-key")
    authorization = header(scope, b"authorization") or b""
    if offered is None and authorization[:7].lower() == b"bearer ":
        offered = authorization[7:].strip()
    return offered is not None and hmac.compare_digest(offered, key)


def unauthorized() -> JSONResponse:
    message = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    return error_response(401, message, {"WWW-Authenticate": "Bearer"})


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (names are lower-case in ASGI), without building a dict of all
    of them on every request."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
