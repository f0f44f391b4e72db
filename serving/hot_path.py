"""The two hot routes, served in front of FastAPI: `POST .../infer` and `POST ...:predict`.

FastAPI's own stack (its telemetry and body-limit middlewares, the error middlewares, the router,
the dependency machinery) costs more per request than our whole inference (see
bench/RESULTS.md). `ServingApp` is the FastAPI application with one change: a request for a hot
route goes straight to our own pure-ASGI stack (metrics, body limit, API key) and then to the
very same handler functions the routers declare. Behaviour, errors and OpenAPI docs stay exactly
those of the FastAPI routes; only the dispatch is cheaper. Everything else is FastAPI's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inference import InvalidInputError
from serving.errors import ServingError, client_error_response, internal_error_response
from serving.protocol import v1, v2

Handler = Callable[[Request, str, str | None], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    path: str
    """The route template, as FastAPI declares it (used as the metrics' endpoint label)."""
    pattern: re.Pattern[str]
    handler: Handler


ROUTES = [
    HotRoute("/v2/models/{name}/infer", re.compile(r"^/v2/models/([^/]+)/infer$"), v2.infer),
    HotRoute("/v2/models/{name}/versions/{version}/infer",
             re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)/infer$"), v2.infer),
    HotRoute("/v1/models/{name}:predict", re.compile(r"^/v1/models/([^/]+):predict$"), v1.predict),
    HotRoute("/v1/models/{name}/versions/{version}:predict",
             re.compile(r"^/v1/models/([^/]+)/versions/([^/]+):predict$"), v1.predict),
]  # fmt: skip


def match(scope: Scope) -> bool:
    """Whether the request is for a hot route; if so, record the route and its parameters in
    the scope (as FastAPI's router would), for the handler and the metrics' endpoint label."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path = scope["path"]
    if not path.startswith(("/v1/models/", "/v2/models/")):
        return False
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            name, version = found.group(1), found.group(2) if found.lastindex == 2 else None
            scope["route"] = route
            scope["path_params"] = {"name": name, **({"version": version} if version else {})}
            return True
    return False


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    """The innermost ASGI app of the hot stack: call the route's handler, answer its errors."""
    route: HotRoute = scope["route"]
    params = scope["path_params"]
    request = Request(scope, receive)
    try:
        request._body = await read_body(receive)  # what `Request.body()` returns, read cheaper
        response = await route.handler(request, params["name"], params.get("version"))
    except ClientDisconnect:
        return  # nobody is left to answer
    except (ServingError, InvalidInputError) as e:
        response = client_error_response("POST", scope["path"], e)
    except Exception:
        response = internal_error_response("POST", scope["path"])
    await response(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """The whole request body, straight from the ASGI messages (Starlette's streaming reader
    costs more than a small model's run)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ServingApp(FastAPI):
    """FastAPI, except that hot routes bypass its middleware stack for `hot_stack`."""

    hot_stack: ASGIApp
    """`serve` wrapped in the same protection and metrics middlewares as the rest of the app
    (set by `create_app`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if match(scope):
            scope["app"] = self
            await self.hot_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
