"""Conformance with the Open Inference Protocol: the official REST spec (kserve's
open_inference_rest.yaml, from ../shared/oip-spec/) run against the app with schemathesis finds
no answer that contradicts it; a request that names no outputs gets exactly the outputs model
metadata lists (hidden layers stay available by name); the classification extension is
answered as Triton answers it, over HTTP and gRPC, by tritonclient unchanged."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import pytest
import schemathesis
import tritonclient.grpc as tg
import tritonclient.http as th
import yaml
from fastapi.testclient import TestClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from tritonclient.utils import InferenceServerException

import inference
from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS, REPO
from tests.serving.conftest import GrpcServer, Server

SPEC = REPO.parent / "shared" / "oip-spec" / "open_inference_rest.yaml"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SIDE_EFFECTS = inference.load(MODELS / "side_effects")
AGES = np.array([[70.0], [20.0], [45.0]], np.float32)
app = create_app(Settings(repo=MODELS))
app.dataplane.load_all()  # what the lifespan does, so that the fuzzer meets loaded models


def official_spec() -> dict[str, Any]:
    """The spec as published, with the fixes ../shared/oip-spec/SOURCE.md lists: path
    parameters written `{NAME}`, and model names and versions restricted to those served."""
    text = re.sub(r"\$\{(MODEL_NAME|MODEL_VERSION)\}", r"{\1}", SPEC.read_text())
    spec: dict[str, Any] = yaml.safe_load(text)
    entries = app.dataplane.repository.entries()
    served = {
        "MODEL_NAME": sorted(e.name for e in entries),
        "MODEL_VERSION": sorted({str(v) for e in entries for v in e.ready_versions}),
    }
    for item in spec["paths"].values():
        for parameter in item.get("parameters", []):
            parameter["schema"]["enum"] = served[parameter["name"]]
    return spec


if SPEC.is_file():
    schema = schemathesis.openapi.from_dict(official_spec())
    schema.app = app
    # Requests the spec allows: it documents 200 alone for metadata and ready, so a negative
    # case (an unknown model, which is a 404 with its error object) would read as undocumented.
    # Invalid requests and every status: tests/serving/test_openapi.py, against our own spec.
    schema.config.generation.update(modes=[GenerationMode.POSITIVE])
    parametrize = schema.parametrize()
else:  # outside the shared workspace: the spec's copy is not there
    schema = None
    parametrize = pytest.mark.skip(reason=f"the official spec's copy is not at {SPEC}")


@pytest.fixture(autouse=True, scope="module")
def _shutdown() -> Iterator[None]:
    yield
    app.dataplane.close()


@parametrize  # type: ignore[misc]
@hypothesis.settings(
    max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_the_official_spec_finds_no_contradiction(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)


def official(path: str, method: str) -> Any:
    if schema is None:
        pytest.skip(f"the official spec's copy is not at {SPEC}")
    return schema[path][method]


@pytest.mark.parametrize(
    "outputs",
    [
        None,
        [{"name": "dense"}],
        [{"name": "scores", "parameters": {"classification": 2}}, {"name": "class_index"}],
    ],
    ids=["default", "hidden layer", "classification"],
)
def test_real_answers_fit_the_official_spec(outputs: Any) -> None:
    body: dict[str, Any] = {
        "id": "7",
        "inputs": [{"name": "features", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 3]}],
    }
    if outputs is not None:
        body["outputs"] = outputs
    client = TestClient(app)
    for path, method, url, kwargs in [
        ("/v2/", "GET", "/v2/", {}),
        ("/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}", "GET", "/v2/models/side_effects/versions/1", {}),
        ("/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer", "POST", "/v2/models/side_effects/versions/1/infer", {"json": body}),
    ]:  # fmt: skip
        answer = client.request(method, url, **kwargs)
        assert answer.status_code == 200, answer.text
        official(path, method).validate_response(answer)


def test_metadata_lists_what_a_request_without_outputs_gets() -> None:
    client = TestClient(app)
    for name in ("side_effects", "iris"):
        meta = client.get(f"/v2/models/{name}").json()
        rows = [[1.0] * meta["inputs"][0]["shape"][1]]
        body = {"inputs": [{"name": "features", "shape": [1, len(rows[0])], "datatype": "FP32", "data": rows}]}  # fmt: skip
        answer = client.post(f"/v2/models/{name}/infer", json=body).json()
        assert [o["name"] for o in answer["outputs"]] == [o["name"] for o in meta["outputs"]]
        hidden = [t["name"] for t in meta["parameters"]["hidden_outputs"]]
        assert hidden and not set(hidden) & {o["name"] for o in meta["outputs"]}


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    s = GrpcServer("--repo", str(MODELS)).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clients(server: GrpcServer) -> Iterator[dict[str, Any]]:
    http = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    grpc = tg.InferenceServerClient(server.grpc_target)
    yield {"http": (http, th), "grpc": (grpc, tg)}
    http.close()
    grpc.close()


def ask(clients: dict[str, Any], protocol: str, outputs: list[Any] | None = None) -> Any:
    client, module = clients[protocol]
    tensor = module.InferInput("features", list(AGES.shape), "FP32")
    tensor.set_data_from_numpy(AGES)
    return client.infer("side_effects", [tensor], outputs=outputs)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_gets_every_output_metadata_lists(clients, protocol: str):  # type: ignore[no-untyped-def]
    client, _ = clients[protocol]
    meta = (
        client.get_model_metadata("side_effects", as_json=True)
        if protocol == "grpc"
        else (client.get_model_metadata("side_effects"))
    )
    result = ask(clients, protocol)
    for output in meta["outputs"]:
        assert result.as_numpy(output["name"]) is not None, output["name"]
    assert result.as_numpy("dense") is None  # a hidden layer: only when named
    module = clients[protocol][1]
    named = ask(clients, protocol, [module.InferRequestedOutput("dense")])
    want = SIDE_EFFECTS.run(AGES, ["dense"]).outputs["dense"]
    np.testing.assert_allclose(named.as_numpy("dense"), want, rtol=1e-6)


def top_classes(count: int) -> list[list[bytes]]:
    """Triton's answer: each row's `count` highest scores as b"score:index:label"."""
    scores = SIDE_EFFECTS.predict(AGES).scores
    labels = SIDE_EFFECTS.metadata.classes or []
    return [
        [f"{row[i]:f}:{i}:{labels[i]}".encode() for i in np.argsort(-row, kind="stable")[:count]]
        for row in scores
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_classification_is_answered_as_triton_does(clients, protocol: str, count: int):  # type: ignore[no-untyped-def]
    module = clients[protocol][1]
    outputs = [
        module.InferRequestedOutput("scores", class_count=count),
        module.InferRequestedOutput("class_index"),
    ]
    result = ask(clients, protocol, outputs)
    got = result.as_numpy("scores")
    assert got.shape == (3, min(count, 2))  # no more than the classes
    assert got.tolist() == top_classes(count)
    np.testing.assert_array_equal(
        result.as_numpy("class_index"), SIDE_EFFECTS.predict(AGES).class_index
    )


def test_classification_of_an_unlabelled_output_has_no_label(clients):  # type: ignore[no-untyped-def]
    result = ask(clients, "http", [th.InferRequestedOutput("dense", class_count=1)])
    dense = SIDE_EFFECTS.run(AGES, ["dense"]).outputs["dense"]
    best = dense.argmax(axis=1)
    want = [[f"{row[i]:f}:{i}".encode()] for row, i in zip(dense, best, strict=True)]
    assert result.as_numpy("dense").tolist() == want


@pytest.mark.parametrize("value", [0, -1, "two", True, 1.5])
def test_a_bad_class_count_is_a_400_naming_it(server: Server, value: Any):
    import httpx

    body = {
        "inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [70]}],
        "outputs": [{"name": "scores", "parameters": {"classification": value}}],
    }
    answer = httpx.post(f"{server.url}/v2/models/side_effects/infer", json=body)
    assert answer.status_code == 400
    assert "'classification' must be a positive integer" in answer.json()["error"]
    assert "output 'scores'" in answer.json()["error"]


def test_a_bad_class_count_over_grpc_is_invalid_argument(clients):  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException, match="must be a positive integer") as caught:
        ask(clients, "grpc", [tg.InferRequestedOutput("scores", class_count=-2)])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_spec_copy_is_the_one_documented() -> None:
    if not SPEC.is_file():
        pytest.skip(f"the official spec's copy is not at {SPEC}")
    assert "open_inference_rest.yaml" in (SPEC.parent / "SOURCE.md").read_text()
    assert Path(SPEC).read_text().startswith("# Copyright 2023 The KServe Authors.")
