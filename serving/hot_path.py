"""The two hot routes, served below FastAPI's router: `POST .../infer` and `POST ...:predict`.

FastAPI's routing and dependency machinery cost more per request than our whole inference
(see bench/RESULTS.md). This middleware sits innermost, after metrics, body limit and API key,
and sends matching requests straight to the very same handler functions the routers declare.
Behaviour, errors and OpenAPI docs stay exactly those of the FastAPI routes; only the dispatch
is cheaper. Everything else falls through to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
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


class HotPathMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route in ROUTES:
                match = route.pattern.match(path)
                if match:
                    await self._serve(route, match, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: HotRoute, match: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        name, version = match.group(1), match.group(2) if match.lastindex == 2 else None
        scope["route"] = route  # the endpoint label of the request metrics
        scope["path_params"] = {"name": name, **({"version": version} if version else {})}
        request = Request(scope, receive)
        try:
            response = await route.handler(request, name, version)
        except (ServingError, InvalidInputError) as e:
            response = client_error_response("POST", scope["path"], e)
        except Exception:
            response = internal_error_response("POST", scope["path"])
        await response(scope, receive, send)
