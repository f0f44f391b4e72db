"""Bring your own model, end to end: bare graphs from skl2onnx and torch in a repository, served
by a real `python -m serving` on 127.0.0.1 and called with tritonclient (binary and JSON) and
plain HTTP; answers equal onnxruntime's; a graph that cannot load is refused while the rest
serve."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests import byom
from tests.serving.conftest import Server

DATATYPES = {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}


@pytest.fixture(scope="module")
def repo(byom_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bare graphs, plus two that cannot be served: a ZipMap and a file that is no graph."""
    target = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(byom_repo, target)
    byom.zipmap(target)
    byom.dtypes(target)
    (target / "renamed").mkdir()  # a bundle copied under another name and version
    shutil.copytree(target / "digits_sklearn" / "1", target / "renamed" / "2")
    (target / "renamed" / "2" / "metadata.json").write_text('{"name": "digits", "version": 7}')
    (target / "garbage" / "1").mkdir(parents=True)
    (target / "garbage" / "1" / "model.onnx").write_bytes(b"not a graph")
    return target


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    s = Server("--repo", str(repo), "--max-batch-size", "16").wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def direct(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


CASES = {
    "tokens": lambda: byom.token_batch(rows=3, length=6),
    "digits_cnn": lambda: {"image": byom.digits_images(5)},
    "digits_sklearn": lambda: {"X": byom.digits_images(7).reshape(7, 64) * 16},
    "strings": lambda: {"text": np.array(["Hello", "Ünïcode", ""], dtype=object)},
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", list(CASES))
def test_tritonclient_answers_as_onnxruntime(client, repo: Path, name: str, binary: bool):  # type: ignore[no-untyped-def]
    feeds = CASES[name]()
    tensors = []
    for key, array in feeds.items():
        tensor = triton.InferInput(key, list(array.shape), DATATYPES[array.dtype.type])
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    want = direct(repo, name, feeds)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in want]
    result = client.infer(name, tensors, outputs=outputs)
    for key, expected in want.items():
        got = result.as_numpy(key)
        if expected.dtype == object:  # tritonclient gives BYTES back as bytes
            assert [v.decode() if isinstance(v, bytes) else v for v in got] == expected.tolist()
        else:
            np.testing.assert_array_equal(got, expected)


def test_answers_name_the_model_and_version_as_the_repository_does(client, http: httpx.Client):  # type: ignore[no-untyped-def]
    """A bundle copied to `renamed/2/` with an overlay still saying `digits`, version 7: clients
    see the name they called and the folder's version, over v2 and v1 alike."""
    pixels = byom.digits_images(1).reshape(1, 64) * 16
    tensor = triton.InferInput("X", [1, 64], "FP32")
    tensor.set_data_from_numpy(pixels)
    answer = client.infer("renamed", [tensor]).get_response()
    assert (answer["model_name"], answer["model_version"]) == ("renamed", "2")
    v1 = http.post("/v1/models/renamed:predict", json={"instances": pixels.tolist()}).json()
    assert (v1["model_name"], v1["model_version"]) == ("renamed", "2")
    assert http.get("/v2/models/renamed").json()["parameters"]["version"] == "2"


def test_no_outputs_named_returns_every_output(client, repo: Path):  # type: ignore[no-untyped-def]
    feeds = byom.token_batch(rows=2, length=4)
    tensors = [triton.InferInput(k, list(v.shape), "INT64") for k, v in feeds.items()]
    for tensor, array in zip(tensors, feeds.values(), strict=True):
        tensor.set_data_from_numpy(array)
    result = client.infer("tokens", tensors)
    assert result.as_numpy("hidden").shape == (2, 4, 8)
    np.testing.assert_array_equal(
        result.as_numpy("logits"), direct(repo, "tokens", feeds)["logits"]
    )


def test_metadata_lists_the_graphs_signature(client):  # type: ignore[no-untyped-def]
    meta = client.get_model_metadata("tokens")
    assert meta["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert {"name": "hidden", "datatype": "FP32", "shape": [-1, -1, 8]} in meta["outputs"]
    cnn = client.get_model_metadata("digits_cnn")
    assert cnn["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]


def test_graphs_that_cannot_load_are_refused_while_the_rest_serve(client, http: httpx.Client):  # type: ignore[no-untyped-def]
    assert client.is_server_ready()
    assert client.is_model_ready("tokens") and not client.is_model_ready("zipmap")
    status = http.get("/v1/models/zipmap").json()
    assert status["ready"] is False and "'zipmap': False" in status["reason"]
    answer = http.post("/v2/models/garbage/infer", json={"inputs": []})
    assert answer.status_code == 503
    assert "onnxruntime cannot load this model" in answer.json()["error"]


def infer_json(http: httpx.Client, name: str, inputs: list[dict[str, object]]) -> httpx.Response:
    return http.post(f"/v2/models/{name}/infer", json={"inputs": inputs})


@pytest.mark.parametrize(
    ("name", "inputs", "message"),
    [
        (
            "digits_cnn",
            [{"name": "image", "shape": [1, 1, 8, 7], "datatype": "FP32", "data": [0.0] * 56}],
            "input 'image': expected shape [-1, 1, 8, 8] (-1: any size), got [1, 1, 8, 7]",
        ),
        (
            "digits_cnn",
            [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
            "input 'image': expected shape [-1, 1, 8, 8] (-1: any size), got [1, 64]",
        ),
        (
            "tokens",
            [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}],
            "inputs ['input_ids'] do not match the model's inputs: 'input_ids' INT64 [-1, -1], "
            "'attention_mask' INT64 [-1, -1]",
        ),
        (
            "tokens",
            [
                {"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ],
            "input 'input_ids': datatype FP32 does not match the model's INT64",
        ),
        (
            "tokens",
            [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "attention_mask", "shape": [2, 1], "datatype": "INT64", "data": [1, 1]},
            ],
            "different batch sizes ('input_ids' 1, 'attention_mask' 2)",
        ),
        (
            "tokens",
            [
                {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1000, 2]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ],
            "the model cannot run on this input: indices element out of data bounds, idx=1000",
        ),
        (
            "tokens",
            [
                {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
                {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
            ],
            "the model cannot run on this input: Attempting to broadcast an axis by a "
            "dimension other than 1. 2 by 3 (node '/Mul', a Mul)",
        ),
        (
            "strings",
            [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 3]}],
            "input 'text': 'data' must hold BYTES as strings",
        ),
    ],
)
def test_bad_shapes_and_datatypes_are_400_naming_the_input(  # type: ignore[no-untyped-def]
    http: httpx.Client, name: str, inputs, message: str
):
    answer = infer_json(http, name, inputs)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_v1_instances_and_columnar_inputs(http: httpx.Client, repo: Path):
    images = byom.digits_images(2)
    want = direct(repo, "digits_cnn", {"image": images})
    answer = http.post("/v1/models/digits_cnn:predict", json={"instances": images.tolist()})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    np.testing.assert_allclose([p["scores"] for p in predictions], want["scores"], rtol=1e-6)
    assert np.asarray(predictions[0]["features"]).shape == (4, 4, 4)
    feeds = byom.token_batch(rows=2, length=3)
    instances = [{k: v[i].tolist() for k, v in feeds.items()} for i in range(2)]
    by_instance = http.post("/v1/models/tokens:predict", json={"instances": instances}).json()
    columnar = http.post(
        "/v1/models/tokens:predict", json={"inputs": {k: v.tolist() for k, v in feeds.items()}}
    ).json()
    logits = direct(repo, "tokens", feeds)["logits"]
    np.testing.assert_allclose([p["logits"] for p in by_instance["predictions"]], logits, rtol=1e-6)
    np.testing.assert_allclose(columnar["outputs"]["logits"], logits, rtol=1e-6)
    strings = http.post("/v1/models/strings:predict", json={"instances": ["AbC", "x"]}).json()
    assert strings["predictions"] == ["abc", "x"]
    bad = http.post("/v1/models/tokens:predict", json={"instances": [{"input_ids": [1]}]})
    assert (
        bad.status_code == 400
        and "instance 0: expected an object of the model's inputs" in bad.text
    )


def test_requests_of_different_lengths_are_never_merged(http: httpx.Client, repo: Path):
    """Adaptive batching is on (--max-batch-size 16): concurrent token requests of different
    lengths each get exactly their own answer."""
    import concurrent.futures

    batches = [byom.token_batch(rows=1 + i % 2, length=3 + i % 3, seed=i) for i in range(12)]

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        inputs = [
            {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
            for k, v in feeds.items()
        ]
        outputs = infer_json(http, "tokens", inputs).json()["outputs"]
        hidden = next(o for o in outputs if o["name"] == "hidden")
        return np.asarray(hidden["data"], np.float32).reshape(hidden["shape"])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, batches))
    for feeds, got in zip(batches, answers, strict=True):
        np.testing.assert_allclose(got, direct(repo, "tokens", feeds)["hidden"], rtol=1e-6)


def test_tritonclient_errors_name_the_input(client):  # type: ignore[no-untyped-def]
    tensor = triton.InferInput("image", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.full((1, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(InferenceServerException, match=r"'image': NaN or infinity in row 0"):
        client.infer("digits_cnn", [tensor])


def test_a_graph_outside_a_version_folder_is_listed_with_the_fix(byom_repo: Path, tmp_path: Path):
    from tests.serving.conftest import running_app

    repo = tmp_path / "models"
    (repo / "flat").mkdir(parents=True)
    shutil.copy(byom_repo / "tokens" / "1" / "model.onnx", repo / "flat" / "model.onnx")
    shutil.copytree(byom_repo / "digits_cnn", repo / "digits_cnn")
    with running_app(repo=repo) as app:
        status = app.get("/v1/models/flat").json()
        assert status["ready"] is False
        assert "put model.onnx in a numbered version folder" in status["reason"]
        assert app.get("/v2/models/digits_cnn/ready").status_code == 200


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_tensor_type_round_trips(client, binary: bool):  # type: ignore[no-untyped-def]
    """An identity graph of ten types, at the edges of their ranges."""
    feeds = byom.dtype_batch()
    tensors = []
    for key, array in feeds.items():
        tensor = triton.InferInput(key, list(array.shape), byom.DTYPES[key][0])
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    outputs = [triton.InferRequestedOutput(f"{k}_out", binary_data=binary) for k in feeds]
    result = client.infer("dtypes", tensors, outputs=outputs)
    for key, array in feeds.items():
        got = result.as_numpy(f"{key}_out")
        assert got.dtype == array.dtype, key
        np.testing.assert_array_equal(got, array)
