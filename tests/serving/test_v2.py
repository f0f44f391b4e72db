"""Open Inference Protocol v2 over the committed models: every answer equals `inference`."""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

import inference
from tests.conftest import MODELS

AGES = np.array([[70.0], [20.0], [64.0], [13.0], [100.0]], np.float32)
SIDE_EFFECTS = inference.load(MODELS / "side_effects")
INFER = "/v2/models/side_effects/infer"


def tensor(data: Any, shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    shape = shape if shape is not None else list(np.shape(data))
    return {"name": "features", "datatype": "FP32", "shape": shape, "data": data, **extra}


def post(client: TestClient, body: Any, path: str = INFER, **kwargs: Any) -> Any:
    return client.post(
        path, content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), **kwargs
    )


def test_health_and_server_metadata(client: TestClient):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "onnx-bundle-serving"
    assert set(meta["extensions"]) == {
        "binary_tensor_data",
        "model_repository",
        "model_configuration",
        "statistics",
    }


@pytest.mark.parametrize("path", ["/v2/models/side_effects", "/v2/models/side_effects/versions/1"])
def test_model_metadata(client: TestClient, path: str):
    meta = client.get(path).json()
    assert meta["name"] == "side_effects"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["outputs"][:2] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "class_index", "datatype": "INT64", "shape": [-1]},
    ]
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    assert meta["parameters"]["feature_names"] == ["age"]


def test_model_ready(client: TestClient):
    assert client.get("/v2/models/iris/ready").json() == {
        "name": "iris",
        "version": "1",
        "ready": True,
    }
    assert client.get("/v2/models/iris/versions/1/ready").status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope", 404, "unknown model 'nope'; models: digits, iris, side_effects"),
        ("/v2/models/nope/ready", 404, "unknown model 'nope'"),
        ("/v2/models/iris/versions/9", 404, "model 'iris' has no version 9; versions: 1"),
        (
            "/v2/models/iris/versions/latest",
            400,
            "model version must be a positive integer, got 'latest'",
        ),
        ("/v2/nothing/here", 404, "no route GET /v2/nothing/here; the routes are listed at /docs"),
    ],
)
def test_unknown_models_and_versions(client: TestClient, path: str, status: int, message: str):
    response = client.get(path)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("/v1/models/iris/predict", "POST /v1/models/iris:predict"),
        ("/v1/models/iris/versions/1/predict", "POST /v1/models/iris/versions/1:predict"),
        ("/v2/models/iris:infer", "POST /v2/models/iris/infer"),
        ("/v2/models/iris/predict", "POST /v2/models/iris/infer"),
    ],
)
def test_a_near_miss_of_a_predict_route_says_which_was_meant(
    client: TestClient, path: str, meant: str
):
    response = client.post(path, json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code in (404, 405)  # 405: `/v2/models/{name}` takes GET
    assert response.json()["error"].endswith(f"{path}; did you mean {meant}?")


def test_an_id_in_any_script_comes_back_and_a_lone_surrogate_is_refused(client: TestClient):
    answer = post(client, {"id": "essai-été-试验", "inputs": [tensor([[70.0]])]})
    assert answer.status_code == 200 and answer.json()["id"] == "essai-été-试验"
    raw = b'{"id": "\\ud800", "inputs": [' + orjson.dumps(tensor([[70.0]])) + b"]}"
    refused = client.post(INFER, content=raw)
    assert refused.status_code == 400
    assert "'id' is not valid Unicode text" in refused.json()["error"]


@pytest.mark.parametrize("nested", [True, False])
def test_infer_equals_in_process(client: TestClient, nested: bool):
    data = AGES.tolist() if nested else AGES.ravel().tolist()
    response = post(client, {"id": "req-7", "inputs": [tensor(data, [5, 1])]})
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("side_effects", "1", "req-7")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["scores", "class_index"]
    expected = SIDE_EFFECTS.predict(AGES)
    assert outputs["scores"]["shape"] == [5, 2]
    np.testing.assert_allclose(
        np.reshape(outputs["scores"]["data"], (5, 2)), expected.scores, atol=1e-6
    )
    assert outputs["class_index"]["data"] == expected.class_index.tolist()
    assert outputs["class_index"]["datatype"] == "INT64"


def test_requested_outputs_hidden_layers_and_parameters(client: TestClient):
    body = {
        "inputs": [tensor(AGES.tolist())],
        "outputs": [{"name": "dense_1"}, {"name": "class_index"}],
        "parameters": {"priority": 1, "tag": "x"},
        "model_name": "side_effects",
    }
    outputs = post(client, body).json()["outputs"]
    assert [o["name"] for o in outputs] == ["dense_1", "class_index"]
    hidden = SIDE_EFFECTS.predict(AGES, outputs=["dense_1"])["dense_1"]
    np.testing.assert_allclose(np.reshape(outputs[0]["data"], (5, 32)), hidden, atol=1e-6)


def test_infer_on_a_version_route(client: TestClient):
    response = post(
        client, {"inputs": [tensor([[70.0]])]}, "/v2/models/side_effects/versions/1/infer"
    )
    assert response.json()["model_version"] == "1"


def test_no_content_type_and_octet_stream_are_json(client: TestClient):
    raw = orjson.dumps({"inputs": [tensor([[70.0]])]})
    for headers in (
        {},
        {"content-type": "application/octet-stream"},
        {"content-type": "application/json; charset=utf-8"},
    ):
        response = client.post(INFER, content=raw, headers=headers)
        assert response.status_code == 200, (headers, response.text)


def binary_request(
    rows: np.ndarray,
    outputs: list[dict[str, Any]] | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    blob = rows.astype("<f4").tobytes()
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def split_binary_response(response: Any) -> dict[str, np.ndarray]:
    n = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:n])
    offset, arrays = n, {}
    for o in header["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
        if "data" in o:
            arrays[o["name"]] = np.array(o["data"], dtype).reshape(o["shape"])
            continue
        size = o["parameters"]["binary_data_size"]
        arrays[o["name"]] = np.frombuffer(response.content[offset : offset + size], dtype).reshape(
            o["shape"]
        )
        offset += size
    assert offset == len(response.content)
    return arrays


def test_binary_in_and_out(client: TestClient):
    body, headers = binary_request(AGES, parameters={"binary_data_output": True})
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    arrays = split_binary_response(response)
    expected = SIDE_EFFECTS.predict(AGES)
    np.testing.assert_array_equal(arrays["scores"], expected.scores)
    np.testing.assert_array_equal(arrays["class_index"], expected.class_index)


def test_binary_flag_per_output_overrides_the_default(client: TestClient):
    outputs = [
        {"name": "scores", "parameters": {"binary_data": True}},
        {"name": "class_index", "parameters": {"binary_data": False}},
    ]
    body, headers = binary_request(AGES, outputs, {"binary_data_output": False})
    response = client.post(INFER, content=body, headers=headers)
    header = json.loads(
        response.content[: int(response.headers["inference-header-content-length"])]
    )
    assert "data" not in header["outputs"][0] and header["outputs"][1]["data"] == [1, 0, 1, 0, 1]
    outputs = [{"name": "scores"}]  # no flag of its own: follows binary_data_output
    body, headers = binary_request(AGES, outputs, {"binary_data_output": True})
    assert "binary_data_size" in str(
        client.post(INFER, content=body, headers=headers).content[:200]
    )


def test_binary_input_with_json_output(client: TestClient):
    body, headers = binary_request(AGES)
    response = client.post(INFER, content=body, headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["outputs"][1]["data"] == SIDE_EFFECTS.predict(AGES).class_index.tolist()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_requests(client: TestClient, encoding: str):
    body, headers = binary_request(AGES)
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = client.post(INFER, content=packed, headers={**headers, "Content-Encoding": encoding})
    assert response.status_code == 200, response.text


def binary_with(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


BAD_REQUESTS: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("invalid JSON", b'{"inputs": [', {}, 400, "the request body is not valid JSON"),
    ("empty body", b"", {}, 400, "the request body is empty"),
    ("not an object", b"[1, 2]", {}, 400, "must be a JSON object with an 'inputs' list"),
    (
        "wrong content type",
        b"{}",
        {"content-type": "text/plain"},
        415,
        "unsupported content type 'text/plain'",
    ),
    (
        "form content type",
        b"{}",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "-H 'Content-Type: application/json'",
    ),
    ("missing inputs", {"outputs": []}, {}, 400, "inputs: Field required"),
    (
        "inputs not a list",
        {"inputs": {"features": [70]}},
        {},
        400,
        "inputs: Input should be a valid list",
    ),
    ("no inputs", {"inputs": []}, {}, 400, "inputs: List should have at least 1 item"),
    (
        "wrong input name",
        {"inputs": [{**tensor([[70.0]]), "name": "age"}]},
        {},
        400,
        "inputs ['age'] do not match the model's inputs: 'features' FP32 [-1, 1]",
    ),
    (
        "two inputs",
        {"inputs": [tensor([[70.0]]), tensor([[70.0]])]},
        {},
        400,
        "do not match the model's inputs",
    ),
    (
        "shape does not match data",
        {"inputs": [tensor([70.0, 20.0], [3, 1])]},
        {},
        400,
        "shape [3, 1] needs 3 values but 'data' has 2",
    ),
    (
        "shape does not fit model",
        {"inputs": [tensor([[70.0, 1.0]], [1, 2])]},
        {},
        400,
        "input 'features': expected shape [-1, 1] (-1: any size), got [1, 2]",
    ),
    (
        "rank does not fit model",
        {"inputs": [tensor([70.0], [1])]},
        {},
        400,
        "input 'features': expected shape [-1, 1] (-1: any size), got [1]",
    ),
    (
        "negative shape",
        {"inputs": [tensor([70.0], [-1, 1])]},
        {},
        400,
        "inputs.0.shape.0: Input should be greater than or equal to 0",
    ),
    (
        "negative shape whose product fits",
        {"inputs": [tensor([70.0], [-1, -1])]},
        {},
        400,
        "Input should be greater than or equal to 0",
    ),
    (
        "empty outputs list",
        {"inputs": [tensor([[70.0]])], "outputs": []},
        {},
        400,
        "outputs: List should have at least 1 item",
    ),
    (
        "repeated output",
        {"inputs": [tensor([[70.0]])], "outputs": [{"name": "scores"}, {"name": "scores"}]},
        {},
        400,
        "ask for one or more distinct outputs",
    ),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested too deeply"),
    (
        "wrong datatype",
        {"inputs": [{**tensor([[70.0]]), "datatype": "FP64"}]},
        {},
        400,
        "datatype FP64 does not match the model's FP32",
    ),
    (
        "unknown datatype",
        {"inputs": [{**tensor([[70.0]]), "datatype": "FLOAT"}]},
        {},
        400,
        "inputs.0.datatype: Input should be",
    ),
    (
        "strings for numbers",
        {"inputs": [tensor([["70"]], [1, 1])]},
        {},
        400,
        "'data' must hold FP32 numbers, got strings",
    ),
    ("booleans for numbers", {"inputs": [tensor([[True]], [1, 1])]}, {}, 400, "got booleans"),
    (
        "a boolean among numbers",
        {"inputs": [tensor([[70.0], [True]], [2, 1])]},
        {},
        400,
        "'data' must hold FP32 numbers, got true/false among them",
    ),
    ("null in data", {"inputs": [tensor([[None]], [1, 1])]}, {}, 400, "got mixed values or null"),
    (
        "ragged data",
        {"inputs": [tensor([[70.0], [20.0, 3.0]], [2, 1])]},
        {},
        400,
        "is not a regular array",
    ),
    (
        "data missing",
        {"inputs": [{k: v for k, v in tensor([[70.0]]).items() if k != "data"}]},
        {},
        400,
        "'data' is missing",
    ),
    (
        "NaN",
        b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
        {},
        400,
        "row 0, feature 'age': nan is missing or not a finite number",
    ),
    (
        "infinity",
        b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 1], "data": [1, Infinity]}]}',
        {},
        400,
        "row 1, feature 'age': inf is missing or not a finite number",
    ),
    (
        "huge number overflows FP32",
        {"inputs": [tensor([[1e300]])]},
        {},
        400,
        "inf is missing or not a finite number",
    ),
    ("empty batch", {"inputs": [tensor([], [0, 1])]}, {}, 400, "the batch is empty"),
    (
        "unknown output",
        {"inputs": [tensor([[70.0]])], "outputs": [{"name": "probabilities"}]},
        {},
        400,
        "unknown output(s) ['probabilities']; the model has: scores, class_index, dense, dense_1",
    ),
    (
        "classification extension",
        {"inputs": [tensor([[70.0]])], "parameters": {"classification": 2}},
        {},
        400,
        "'classification' is a parameter of a requested output",
    ),
    (
        "binary sizes do not add up",
        *binary_with(
            {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": [2, 1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 12,
        ),
        400,
        "binary part has 12 bytes but the inputs' binary_data_size add up to 8",
    ),
    (
        "binary size does not fit shape",
        *binary_with(
            {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": [2, 1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 4,
        ),
        400,
        "binary_data_size 4 does not fit shape [2, 1] of FP32 (8 bytes)",
    ),
    (
        "binary runs past the end",
        *binary_with(
            {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": [2, 1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 4,
        ),
        400,
        "runs past the end of the binary part",
    ),
    (
        "binary size not an integer",
        *binary_with(
            {
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": [1, 1],
                        "parameters": {"binary_data_size": "four"},
                    }
                ]
            },
            b"\0" * 4,
        ),
        400,
        "binary_data_size must be a non-negative integer",
    ),
    (
        "header length past the body",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "999"},
        400,
        "Inference-Header-Content-Length 999 is outside the body",
    ),
    (
        "header length not a number",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "ten"},
        400,
        "Inference-Header-Content-Length must be an integer",
    ),
    (
        "unsupported encoding",
        b"{}",
        {"Content-Encoding": "br"},
        415,
        "unsupported content encoding 'br'",
    ),
    (
        "corrupt gzip",
        b"not gzip",
        {"Content-Encoding": "gzip"},
        400,
        "the body is not valid gzip data",
    ),
    (
        "too many rows",
        {"inputs": [tensor(np.ones((100_001, 1)).tolist())]},
        {},
        413,
        "100001 rows in one request exceed the limit of 100000",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_are_4xx_naming_the_problem(
    client: TestClient, case: str, body: Any, headers: dict[str, str], status: int, message: str
):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = client.post(INFER, content=raw, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    # and the service is still healthy and right afterwards
    assert client.get("/v2/health/ready").status_code == 200
    ok = post(client, {"inputs": [tensor([[70.0]])]}).json()
    assert ok["outputs"][1]["data"] == SIDE_EFFECTS.predict([[70.0]]).class_index.tolist()


def test_unknown_model_on_infer(client: TestClient):
    response = post(client, {"inputs": [tensor([[70.0]])]}, "/v2/models/sideeffects/infer")
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown model 'sideeffects'; models: digits, iris, side_effects"
    }


def test_method_not_allowed_is_json(client: TestClient):
    response = client.get(INFER)
    assert response.status_code == 405
    assert response.json() == {
        "error": f"GET is not allowed on {INFER}; the routes are listed at /docs"
    }


def test_iris_flat_binary_big_batch(client: TestClient):
    rows = np.random.default_rng(0).normal(4, 2, size=(5000, 4)).astype(np.float32)
    blob = rows.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [5000, 4],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    response = client.post(
        "/v2/models/iris/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    arrays = split_binary_response(response)
    np.testing.assert_array_equal(
        arrays["scores"], inference.load(MODELS / "iris").predict(rows).scores
    )
    assert math.isclose(float(arrays["scores"].sum()), 5000, rel_tol=1e-4)
    assert struct.calcsize("<f") == 4
