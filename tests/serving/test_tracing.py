"""OpenTelemetry tracing: the caller's W3C `traceparent` is the parent of a request span with the
model, version and rows, over HTTP (v2, v1) and gRPC; merged requests share one batch span linked
to each; off, nothing of OpenTelemetry's SDK is loaded or called."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tg
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving.http.app import create_app
from serving.ops import tracing
from serving.ops.settings import Settings
from tests.conftest import MODELS, REPO
from tests.serving.conftest import free_port, wait_ready

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
V1_BODY = {"instances": [{"age": 70}, {"age": 20}]}


def v2_body(ages: list[float]) -> dict[str, Any]:
    tensor = {"name": "features", "shape": [len(ages), 1], "datatype": "FP32", "data": ages}
    return {"inputs": [tensor]}


class Traced:
    """An app over side_effects whose spans go to memory."""

    def __init__(self, **settings: Any):
        self.spans = InMemorySpanExporter()
        settings = {"repo": MODELS, "models": ["side_effects"], **settings}
        app = create_app(Settings(**settings), span_exporter=self.spans)
        self.client = TestClient(app, raise_server_exceptions=False)

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(prefix)]


@pytest.fixture(scope="module")
def traced() -> Iterator[Traced]:
    """Tracing on, gRPC too (the TestClient's loop runs the gRPC server)."""
    app = Traced(grpc_port=free_port())
    with app.client:
        wait_ready(app.client)
        yield app


def request_span(app: Traced, route: str) -> ReadableSpan:
    spans = app.named(route)
    assert len(spans) == 1, [s.name for s in app.spans.get_finished_spans()]
    return spans[0]


def assert_child_of_header(span: ReadableSpan) -> None:
    assert span.context is not None
    assert span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert span.parent.is_remote


def test_a_v2_infer_is_a_span_under_the_callers_traceparent(traced: Traced):
    traced.spans.clear()
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=value"}
    answer = traced.client.post(
        "/v2/models/side_effects/infer", json=v2_body([70]), headers=headers
    )
    assert answer.status_code == 200
    span = request_span(traced, "POST /v2/models/{name}/infer")
    assert_child_of_header(span)
    assert span.context is not None
    assert span.context.trace_state.get("vendor") == "value"
    assert span.attributes is not None
    assert (
        dict(span.attributes).items()
        >= {
            "serving.model.name": "side_effects",
            "serving.model.version": "1",
            "serving.rows": 1,
            "serving.protocol": "v2",
            "http.response.status_code": 200,
        }.items()
    )
    # the response names the server span, so that a caller can find it
    assert answer.headers["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


def test_a_v1_predict_is_a_span_and_an_error_is_recorded_on_it(traced: Traced):
    traced.spans.clear()
    headers = {"traceparent": TRACEPARENT}
    assert traced.client.post("/v1/models/side_effects:predict", json=V1_BODY, headers=headers)
    span = request_span(traced, "POST /v1/models/{name}:predict")
    assert_child_of_header(span)
    assert span.attributes is not None
    assert span.attributes["serving.rows"] == 2
    assert span.attributes["serving.protocol"] == "v1"

    traced.spans.clear()
    wrong = traced.client.post("/v1/models/side_effects:predict", json={"instances": [{"x": 1}]})
    assert wrong.status_code in (400, 422)
    span = request_span(traced, "POST /v1/models/{name}:predict")
    assert span.attributes is not None
    assert span.attributes["error.type"] == str(wrong.status_code)
    assert [e.name for e in span.events] == ["exception"]


def test_a_grpc_model_infer_is_a_span_under_the_callers_traceparent(traced: Traced):
    traced.spans.clear()
    settings = traced.client.app.dataplane.settings  # type: ignore[attr-defined]
    tensor = tg.InferInput("features", [3, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[20.0], [45.0], [90.0]], np.float32))
    with tg.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}") as client:
        client.infer("side_effects", [tensor], headers={"traceparent": TRACEPARENT})
    span = request_span(traced, "inference.GRPCInferenceService/ModelInfer")
    assert_child_of_header(span)
    assert span.attributes is not None
    assert (
        dict(span.attributes).items()
        >= {
            "rpc.system": "grpc",
            "rpc.method": "ModelInfer",
            "rpc.grpc.status_code": 0,
            "serving.protocol": "grpc",
            "serving.model.name": "side_effects",
            "serving.model.version": "1",
            "serving.rows": 3,
        }.items()
    )


def test_merged_requests_share_one_batch_span_linked_to_each_request():
    # four one-row requests fill a batch of 4 at once (the long delay is never waited out)
    app = Traced(max_batch_size=4, max_delay_us=5_000_000, inline_max_us=0)
    with app.client, ThreadPoolExecutor(4) as pool:
        wait_ready(app.client)

        def call(age: int) -> int:
            path = "/v2/models/side_effects/infer"
            return app.client.post(path, json=v2_body([age])).status_code

        assert list(pool.map(call, [20, 40, 60, 80])) == [200] * 4
    requests = app.named("POST /v2/models/{name}/infer")
    [batch] = app.named("batch side_effects")
    assert len(requests) == 4
    assert batch.attributes is not None
    assert (
        dict(batch.attributes).items()
        >= {
            "serving.batch.rows": 4,
            "serving.batch.requests": 4,
            "serving.batch.run": "executor",
        }.items()
    )
    linked = {link.context.span_id for link in batch.links}
    assert linked == {r.context.span_id for r in requests if r.context is not None}
    assert batch.parent is not None
    assert batch.parent.span_id in linked  # the child of one of them, in its trace


def test_off_nothing_of_opentelemetry_runs_or_loads():
    """In a fresh process: with tracing off, a request calls no OpenTelemetry function (every
    one raises here) and the SDK is never imported (FastAPI itself imports the API)."""
    script = f"""
import inspect, sys
import opentelemetry.context, opentelemetry.propagate, opentelemetry.trace
from fastapi.testclient import TestClient
from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.serving.conftest import wait_ready

def refuse(*args, **kwargs):
    raise AssertionError("OpenTelemetry called with tracing off")

app = create_app(Settings(repo={str(MODELS)!r}, models=["side_effects"], max_batch_size=8))
assert app.dataplane.tracing is None
with TestClient(app) as client:
    wait_ready(client)
    for module in (opentelemetry.context, opentelemetry.propagate, opentelemetry.trace):
        for name, value in vars(module).items():
            if inspect.isfunction(value):
                setattr(module, name, refuse)
    body = {v2_body([70])!r}
    for _ in range(3):
        assert client.post("/v2/models/side_effects/infer", json=body).status_code == 200
    assert client.post("/v1/models/side_effects:predict", json={V1_BODY!r}).status_code == 200
sdk = sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk"))
assert not sdk, sdk
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # no OTEL_* from outside
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("setting", "env", "expected"),
    [
        ("auto", {}, None),
        ("auto", {"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ("auto", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, None),
        ("auto", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ("off", {"OTEL_TRACES_EXPORTER": "otlp"}, None),
        ("otlp", {}, "otlp"),
    ],
)
def test_tracing_is_on_only_when_asked(setting: str, env: dict[str, str], expected: str | None):
    assert tracing.exporter_choice(setting, env) == expected


def test_asking_for_tracing_without_the_extra_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(tracing, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"onnx-bundle-serving\[tracing\]"):
        Settings(tracing="console")
    with pytest.raises(ValueError, match="exports otlp or console"):
        tracing.exporter_choice("auto", {"OTEL_TRACES_EXPORTER": "zipkin"})
