"""The OpenAPI spec is complete, and a schemathesis run against it finds no 5xx and no answer
that contradicts it (status codes, content types, body schemas, headers)."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS

app = create_app(Settings(repo=MODELS))
app.dataplane.load_all()  # what the lifespan does, so that the fuzzer meets loaded models
schema = schemathesis.openapi.from_asgi("/openapi.json", app)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@schema.parametrize()
@hypothesis.settings(
    max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_no_server_errors_and_no_contradictions(case: schemathesis.Case) -> None:
    try:
        case.call_and_validate(checks=CHECKS)
    finally:
        # A model the fuzzer unloaded would turn later requests into the documented 503
        # "not ready", which the server-error check cannot tell from a fault: load it back.
        for entry in app.dataplane.repository.entries():
            if entry.reason == "unloaded":
                app.dataplane.load(entry.name)


def test_the_spec_documents_every_route_and_body():
    spec = TestClient(app).get("/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/repository/index",
        "/v1/models/{name}:predict",
        "/v1/models/{name}",
        "/metrics",
    ]:
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/InferenceRequest"}
    assert spec["components"]["schemas"]["InferenceRequest"]["examples"]
    assert {"400", "404", "413", "415", "503"} <= set(infer["responses"])
    assert "PredictRequest" in spec["components"]["schemas"]


def test_docs_page_is_served():
    with TestClient(app) as client:
        assert "swagger-ui" in client.get("/docs").text


@pytest.fixture(autouse=True, scope="module")
def _shutdown():  # type: ignore[no-untyped-def]
    yield
    app.dataplane.close()
