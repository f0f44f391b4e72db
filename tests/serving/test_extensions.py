"""Triton's model configuration and statistics extensions, end to end: a real `python -m serving`
with HTTP and gRPC on 127.0.0.1, read with tritonclient.http and tritonclient.grpc unchanged.
The gRPC answers equal the HTTP ones field for field; the statistics count exactly the requests
sent (success and failure, rows, runs per batch size), and show the adaptive batcher merging
requests (fewer executions than inferences)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import MODELS
from tests.serving.conftest import GrpcServer, Server

DELAY_US = 50_000
"""iris's batching delay: long enough that concurrent requests surely meet in one batch."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """side_effects in two versions (policy: all), iris batched, and a graph of fixed shape."""
    target = tmp_path_factory.mktemp("extensions") / "models"
    shutil.copytree(MODELS / "side_effects", target / "side_effects")
    shutil.copytree(target / "side_effects" / "1", target / "side_effects" / "2")
    _serving(target / "side_effects", "version_policy: all")
    shutil.copytree(MODELS / "iris", target / "iris")
    _serving(target / "iris", f"batching: {{max_batch_size: 64, max_delay_us: {DELAY_US}}}")
    _fixed(target / "fixed" / "1" / "model.onnx")
    return target


def _serving(folder: Path, line: str) -> None:
    spec = folder / "model.yaml"
    spec.write_text(f"{spec.read_text()}\nserving:\n  {line}\n")


def _fixed(path: Path) -> None:
    """A graph whose first dimension is fixed (1): never batched, max_batch_size 0."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(helper.make_model(graph).SerializeToString())


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServer]:
    s = GrpcServer("--repo", str(repo)).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server: GrpcServer) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_target)
    yield c
    c.close()


def ages(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], np.float32)


def infer(
    client: Any, module: Any, name: str, feeds: np.ndarray, input_name: str = "features"
) -> Any:
    tensor = module.InferInput(input_name, list(feeds.shape), "FP32")
    tensor.set_data_from_numpy(feeds)
    return client.infer(name, [tensor])


def test_server_metadata_names_both_extensions(http, grpc):  # type: ignore[no-untyped-def]
    extensions = http.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics"} <= set(extensions)
    assert grpc.get_server_metadata(as_json=True)["extensions"] == extensions


def test_config_of_a_batchable_model(http, grpc):  # type: ignore[no-untyped-def]
    config = http.get_model_config("side_effects")
    assert (config["name"], config["platform"], config["backend"]) == (
        "side_effects",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config["max_batch_size"] > 0  # and so the dims leave the batch axis out
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("features", "TYPE_FP32", [1])
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("scores", "TYPE_FP32", [2]),
        ("class_index", "TYPE_INT64", []),
    ]
    hidden = json.loads(config["parameters"]["hidden_outputs"]["string_value"])
    assert hidden == ["dense", "dense_1"]
    assert config["version_policy"] == {"all": {}}
    assert "dynamic_batching" not in config  # batching is off by default
    assert http.get_model_config("side_effects", "2") == config


@pytest.mark.parametrize("name", ["side_effects", "iris", "fixed"])
def test_grpc_config_is_the_http_config(http, grpc, name: str):  # type: ignore[no-untyped-def]
    want = json_format.ParseDict(http.get_model_config(name), mc.ModelConfig())
    assert grpc.get_model_config(name).config == want
    assert grpc.get_model_config(name, "1").config == want


def test_config_shows_adaptive_batching(http):  # type: ignore[no-untyped-def]
    config = http.get_model_config("iris")
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [64],
        "max_queue_delay_microseconds": DELAY_US,
    }
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["input"][0]["dims"] == [4]


def test_config_of_a_model_without_a_batch_axis(http):  # type: ignore[no-untyped-def]
    config = http.get_model_config("fixed")
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [1, 3]  # the whole shape
    assert config["output"][0]["dims"] == [1, 3]
    assert "parameters" not in config or config["parameters"] == {}


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope/config", 404, "unknown model 'nope'"),
        ("/v2/models/nope/stats", 404, "unknown model 'nope'"),
        ("/v2/models/iris/versions/9/config", 404, "model 'iris' has no version 9"),
        ("/v2/models/iris/versions/9/stats", 404, "model 'iris' has no version 9"),
        ("/v2/models/iris/versions/x/stats", 400, "model version must be a positive integer"),
    ],
)
def test_unknown_models_and_versions_are_named(
    server: Server, path: str, status: int, message: str
):
    answer = httpx.get(server.url + path)
    assert answer.status_code == status
    assert message in answer.json()["error"]


def test_grpc_errors_carry_the_same_messages(grpc):  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
        grpc.get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="has no version 9") as caught:
        grpc.get_inference_statistics("iris", "9")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def stat(client: Any, name: str, version: str = "1") -> dict[str, Any]:
    (found,) = client.get_inference_statistics(name, version)["model_stats"]
    return found  # type: ignore[no-any-return]


def test_statistics_count_every_request(server: Server, http, grpc):  # type: ignore[no-untyped-def]
    before_ms = time.time() * 1000
    infer(http, th, "side_effects", ages(20, 40, 60))
    infer(grpc, tg, "side_effects", ages(70))
    infer(grpc, tg, "side_effects", ages(30, 50, 80))
    friendly = httpx.post(server.url + "/v1/models/side_effects:predict", json={"instances": [[5]]})
    assert friendly.status_code == 200
    wrong = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    refused = httpx.post(server.url + "/v2/models/side_effects/infer", json=wrong)
    assert refused.status_code == 400
    after_ms = time.time() * 1000

    found = stat(http, "side_effects", "2")  # the latest version answers
    assert (found["name"], found["version"]) == ("side_effects", "2")
    assert before_ms - 1 <= found["last_inference"] <= after_ms + 1
    assert found["inference_count"] == 3 + 1 + 3 + 1  # rows
    assert found["execution_count"] == 4  # batching is off: one run a request
    stats = found["inference_stats"]
    assert stats["success"]["count"] == 4 and stats["success"]["ns"] > 0
    assert stats["fail"]["count"] == 1 and stats["fail"]["ns"] > 0
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[part]["count"] == 4
    compute = sum(
        stats[p]["ns"] for p in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert stats["compute_infer"]["ns"] > 0 and compute <= stats["success"]["ns"]
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in found["batch_stats"]}
    assert sizes == {1: 2, 3: 2}
    assert stat(http, "side_effects", "1")["execution_count"] == 0  # another version, untouched
    assert stat(http, "side_effects", "1")["last_inference"] == 0


def test_grpc_statistics_are_the_http_statistics(http, grpc):  # type: ignore[no-untyped-def]
    infer(http, th, "side_effects", ages(1, 2))
    for name, version in (("", ""), ("side_effects", ""), ("side_effects", "2")):
        want = json_format.ParseDict(
            http.get_inference_statistics(name, version), pb.ModelStatisticsResponse()
        )
        assert grpc.get_inference_statistics(name, version) == want


def test_statistics_of_all_models_list_every_ready_version(http):  # type: ignore[no-untyped-def]
    listed = [(s["name"], s["version"]) for s in http.get_inference_statistics()["model_stats"]]
    assert listed == [("fixed", "1"), ("iris", "1"), ("side_effects", "1"), ("side_effects", "2")]
    versions = http.get_inference_statistics("side_effects")["model_stats"]
    assert [s["version"] for s in versions] == ["1", "2"]


def test_merged_requests_count_one_execution(server: Server, http):  # type: ignore[no-untyped-def]
    rows = [[5.1, 3.5, 1.4, 0.2]] * 2
    body = {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": rows}]}

    def post(_: int) -> int:
        return httpx.post(server.url + "/v2/models/iris/infer", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, range(8))) == {200}
    found = stat(http, "iris")
    stats = found["inference_stats"]
    assert stats["success"]["count"] == 8
    assert found["inference_count"] == 16
    assert found["execution_count"] < 8  # requests met in the batcher's queue
    assert found["execution_count"] == sum(
        b["compute_infer"]["count"] for b in found["batch_stats"]
    )
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in found["batch_stats"]) == 16
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[part]["count"] == 8  # each request is charged its batch's times
    assert stats["queue"]["ns"] > 0


def test_a_model_without_a_batch_axis_counts_requests(http):  # type: ignore[no-untyped-def]
    tensor = th.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[-1.0, 0.0, 2.0]], np.float32))
    http.infer("fixed", [tensor])
    found = stat(http, "fixed")
    assert (found["inference_count"], found["execution_count"]) == (1, 1)
    assert [b["batch_size"] for b in found["batch_stats"]] == [1]


def test_requests_run_in_the_executor_are_counted(make_client):  # type: ignore[no-untyped-def]
    client = make_client(inline_max_us=0)  # every run goes to the executor's threads
    body = {"inputs": [{"name": "features", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}
    for _ in range(3):
        assert client.post("/v2/models/side_effects/infer", json=body).status_code == 200
    (found,) = client.get("/v2/models/side_effects/versions/1/stats").json()["model_stats"]
    stats = found["inference_stats"]
    assert (found["inference_count"], found["execution_count"]) == (6, 3)
    assert stats["success"]["count"] == stats["queue"]["count"] == 3
    assert stats["queue"]["ns"] > 0 and stats["compute_infer"]["ns"] > 0
    parts = sum(stats[p]["ns"] for p in ("queue", "compute_input", "compute_infer"))
    assert parts <= stats["success"]["ns"]
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in found["batch_stats"]] == [
        (2, 3)
    ]


def test_records_fold_into_the_same_totals_whenever_folded():
    from serving.core.statistics import ModelStats

    stats = ModelStats()
    for i in range(5):  # 2 rows, checked in 1 s, queued 0.5 s, run in 2 s
        stats.alone += (2, 10.0 * i, 10.0 * i + 1, 10.0 * i + 1.5, 10.0 * i + 3.5)
        if i == 2:
            stats.fold()
    stats.executions += (6, 3, 0.75, 100.0, 100.25, 101.25, 101.5)  # 3 requests merged
    stats.answered += (2, 99.0, 102.0, 2, 99.0, 102.0, 2, 99.5, 102.0)
    found = stats.report("m", 1, batchable=True)
    ns = 1_000_000_000
    assert (found["inference_count"], found["execution_count"]) == (16, 6)
    got = {k: (v["count"], v["ns"]) for k, v in found["inference_stats"].items()}
    assert got["success"] == (8, round((5 * 3.5 + 3 + 3 + 2.5) * ns))
    assert got["queue"] == (8, round((5 * 0.5 + 0.75) * ns))
    assert got["compute_input"] == (8, round((5 * 1 + 3 * 0.25) * ns))
    assert got["compute_infer"] == (8, round((5 * 2 + 3 * 1) * ns))
    assert got["compute_output"] == (8, round(3 * 0.25 * ns))
    sizes = {
        b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"])
        for b in found["batch_stats"]
    }
    assert sizes == {2: (5, 10 * ns), 6: (1, ns)}
    assert stats.alone == stats.answered == stats.executions == []
