"""The hot routes served in front of FastAPI are exactly FastAPI's own routes, handlers included."""

from __future__ import annotations

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from serving.hot_path import ROUTES
from serving.protocol import v1, v2


def test_every_hot_route_is_a_documented_route_with_the_same_handler(client: TestClient):
    declared = {
        (r.path, frozenset(r.methods)): r.endpoint
        for router in (v1.router, v2.router)
        for r in router.routes
        if isinstance(r, APIRoute)
    }
    documented = client.get("/openapi.json").json()["paths"]
    for route in ROUTES:
        assert declared[(route.path, frozenset({"POST"}))] is route.handler
        assert "post" in documented[route.path]
        sample = route.path.replace("{name}", "iris").replace("{version}", "1")
        assert route.pattern.match(sample)


def test_lookalike_paths_fall_through_to_fastapi(client: TestClient):
    assert client.post("/v2/models/iris/infer/extra").json() == {"error": "Not Found"}
    assert client.get("/v2/models/iris/infer").status_code == 405
    assert client.post("/v1/models/iris:predictx").status_code == 405  # the GET status route's path
