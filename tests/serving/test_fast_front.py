"""The hot routes served in front of FastAPI are exactly FastAPI's own routes, handlers included:
the fast front reads them from the routers, so there is one route table."""

from __future__ import annotations

import gzip

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from serving.http.fast_front import HotHeaders, hot_routes
from serving.http.routes import v1, v2


def test_every_hot_route_is_a_documented_route_with_the_same_handler(client: TestClient):
    declared = {
        (r.path, frozenset(r.methods)): r.endpoint
        for router in (v1.router, v2.router)
        for r in router.routes
        if isinstance(r, APIRoute)
    }
    documented = client.get("/openapi.json").json()["paths"]
    routes = hot_routes([v1.router, v2.router])
    assert {r.path for r in routes} == {
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
    }
    assert set(client.app.hot_routes) == set(routes)  # type: ignore[attr-defined]
    for route in routes:
        assert declared[(route.path, frozenset({"POST"}))] is route.handler
        assert "post" in documented[route.path]
        sample = route.path.replace("{name}", "iris").replace("{version}", "1")
        assert route.pattern.match(sample)


def test_lookalike_paths_fall_through_to_fastapi(client: TestClient):
    assert client.post("/v2/models/iris/infer/extra").json() == {
        "error": "no route POST /v2/models/iris/infer/extra; the routes are listed at /docs"
    }
    assert client.get("/v2/models/iris/infer").status_code == 405
    assert client.post("/v1/models/iris:predictx").status_code == 405  # the GET status route's path


def test_hot_headers_read_like_starlettes():
    raw = [(b"host", b"a"), (b"content-type", b"application/json"), (b"x-k", b"1"), (b"x-k", b"2")]
    headers = HotHeaders(raw)
    reference = Headers(raw=raw)
    for name in ("Content-Type", "content-type", "x-k", "missing"):
        assert headers.get(name) == reference.get(name)
    assert headers.get("missing", "") == ""
    assert headers["x-k"] == reference["x-k"] == "1"
    with pytest.raises(KeyError):
        headers["missing"]
    assert list(headers) == ["host", "content-type", "x-k", "x-k"]
    assert len(headers) == 4


def test_a_request_with_many_headers_reads_its_own(client: TestClient):
    extra = {f"x-filler-{i}": "v" for i in range(20)}
    body = b'{"instances": [{"age": 70}]}'
    gzipped = gzip.compress(body)
    answer = client.post(
        "/v1/models/side_effects:predict",
        content=gzipped,
        headers={
            **extra,
            "Content-Type": "Application/JSON; charset=utf-8",
            "Content-Encoding": "gzip",
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "side_effects"
