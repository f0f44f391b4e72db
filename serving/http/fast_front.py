"""The two hot routes, served in front of FastAPI: `POST .../infer` and `POST ...:predict`.

FastAPI's own stack (its telemetry and body-limit middlewares, the error middlewares, the router,
the dependency machinery) costs more per request than our whole inference (see
bench/RESULTS.md). `ServingApp` is the FastAPI application with one change: a request for a hot
route goes straight to `HotStack` (metrics, body limit, API key in one call) and then to the
very same handler functions the routers declare. Behaviour, errors and OpenAPI docs stay exactly
those of the FastAPI routes; only the dispatch is cheaper. Everything else is FastAPI's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from inference import InvalidInputError
from serving.core.dataplane import DataPlane
from serving.core.errors import PayloadTooLarge, ServingError
from serving.http.coalescing import Coalescer
from serving.http.errors import client_error_response, error_response, internal_error_response
from serving.http.middleware import declared_too_large, key_allowed, too_large, unauthorized
from serving.http.routes import v1, v2
from serving.ops.metrics import Metrics
from serving.ops.tracing import Tracing

Handler = Callable[[Request, str, str | None], Awaitable[Response]]


FAST_HANDLERS = (v2.infer, v1.predict)
"""The handlers served by the fast front: wherever the routers declare them (POST), and only
there, so that one route table (the routers') decides both stacks."""


@dataclass(frozen=True)
class HotRoute:
    path: str
    """The route template, as FastAPI declares it (used as the metrics' endpoint label)."""
    pattern: re.Pattern[str]
    """FastAPI's own compiled path, named groups `name` and `version`."""
    handler: Handler


def hot_routes(routers: Iterable[APIRouter]) -> tuple[HotRoute, ...]:
    """The routes whose handler the fast front serves, as the routers (included in the app
    without a prefix) declare and compile them."""
    return tuple(
        HotRoute(r.path, r.path_regex, r.endpoint)
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute) and r.endpoint in FAST_HANDLERS and r.methods == {"POST"}
    )


def match(scope: Scope, routes: tuple[HotRoute, ...]) -> bool:
    """Whether the request is for a hot route; if so, record the route and its parameters in
    the scope (as FastAPI's router would), for the handler and the metrics' endpoint label."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path = scope["path"]
    if not path.startswith(("/v1/models/", "/v2/models/")):
        return False
    for route in routes:
        found = route.pattern.match(path)
        if found:
            scope["route"] = route
            scope["path_params"] = found.groupdict()
            return True
    return False


class HotHeaders(Mapping[str, str]):
    """The request's headers as a read-only mapping of lower-case names, decoded on look-up:
    the handlers read two or three of them, and decoding all (clients send six to ten) costs
    more than finding those few in the raw list."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self._raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        name = key.lower().encode("latin-1")
        for k, v in self._raw:
            if k == name:
                return v.decode("latin-1")
        return default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return (k.decode("latin-1") for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class HotRequest:
    """What the hot handlers read of a request (`app`, `headers`, `state`, `body()`), as a plain
    object: building and reading Starlette's `Request` cost more than a small model's run."""

    __slots__ = ("_body", "app", "headers", "state")

    def __init__(self, app: Any, headers: HotHeaders, body: bytes, state: SimpleNamespace):
        self.app = app
        self.headers = headers
        self.state = state
        self._body = body

    async def body(self) -> bytes:
        return self._body


class HotStack:
    """The hot routes' whole stack in one call: the same request metrics, body limit and API key
    as the middlewares in front of FastAPI's routes (and their same messages), then the route's
    handler. One function instead of four nested ASGI layers with their wrapped `send` and
    `receive` saves a fifth of a small model's request. Responses ready in the same turn of
    the loop leave together (`serving.http.coalescing`)."""

    def __init__(self, metrics: Metrics, limit: int, key: str | None):
        self.metrics = metrics
        self.limit = limit
        self.key = key.encode() if key is not None else None
        self.coalescer = Coalescer()
        self.tracing: Tracing | None = None
        """With tracing on (`create_app` wraps this stack in its span), errors answered are
        recorded on the request's span."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: HotRoute = scope["route"]
        metrics = self.metrics
        start = time.perf_counter()
        metrics.answering += 1
        state = SimpleNamespace(model_name="", model_version="")  # the handler notes the model
        status = 500
        try:
            response = await self._answer(scope, receive, state)
            if response is not None:
                status = response.status_code
                await self.coalescer.hold()  # with the other responses of this turn
                await response(scope, receive, send)
        finally:
            metrics.answering -= 1
            metrics.observe_request(
                state.model_name,
                state.model_version,
                route.path,
                status,
                time.perf_counter() - start,
            )

    async def _answer(
        self, scope: Scope, receive: Receive, state: SimpleNamespace
    ) -> Response | None:
        """The response; None when the client left before it."""
        if self.key is not None and not key_allowed(scope, self.key):
            return unauthorized()
        declared = declared_too_large(scope, self.limit)
        if declared is not None:
            return error_response(413, declared)
        route: HotRoute = scope["route"]
        params = scope["path_params"]
        try:
            body = await read_body(receive, self.limit)
            headers = HotHeaders(scope["headers"])
            request = cast(Request, HotRequest(scope["app"], headers, body, state))
            return await route.handler(request, params["name"], params.get("version"))
        except ClientDisconnect:
            return None
        except (ServingError, InvalidInputError) as e:
            if self.tracing is not None:
                self.tracing.record(e)
            return client_error_response("POST", scope["path"], e)
        except Exception as e:
            if self.tracing is not None:
                self.tracing.record(e)
            return internal_error_response("POST", scope["path"])


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, straight from the ASGI messages (Starlette's streaming reader
    costs more than a small model's run); 413 once it grows over `limit`."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large(size, limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ServingApp(FastAPI):
    """FastAPI, except that hot routes bypass its middleware stack for `hot_stack`."""

    dataplane: DataPlane
    """What every route serves from (set by `create_app`)."""
    hot_stack: ASGIApp
    """The hot routes' `HotStack` (set by `create_app`)."""
    hot_routes: tuple[HotRoute, ...] = ()
    """The routes `hot_stack` serves, from the app's routers (set by `create_app`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if match(scope, self.hot_routes):
            scope["app"] = self
            await self.hot_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
