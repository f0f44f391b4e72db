"""The Open Inference Protocol over gRPC, end to end: a real `python -m serving --grpc-port` on
127.0.0.1 called with tritonclient.grpc as users run it (raw tensors, its default) and with
tritonclient's own stubs for typed `contents`; answers equal onnxruntime's and the HTTP v2
answer, and errors carry HTTP's messages under the matching gRPC status codes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import byom
from tests.conftest import MODELS, REPO
from tests.serving.conftest import GrpcServer, Server, free_port

DATATYPES = {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}
TYPED = {k: v for k, v in byom.DTYPES.items() if k != "f16"}
"""Every datatype that a typed `contents` field can hold (FP16 travels raw only)."""
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
"""Where the spec (`InferTensorContents`) puts each datatype's values."""


@pytest.fixture(scope="module")
def repo(byom_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("grpc") / "models"
    shutil.copytree(byom_repo, target)
    shutil.copytree(MODELS / "side_effects", target / "side_effects")
    shutil.copytree(MODELS / "iris", target / "spare")  # loaded and unloaded by a test
    byom.dtypes(target)
    byom.dtypes(target, name="typed")
    _identity(target / "typed" / "1" / "model.onnx")
    return target


def _identity(path: Path) -> None:
    """The `dtypes` identity graph without its FP16 input, for typed requests."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    for field in (graph.input, graph.output):
        keep = [t for t in field if not t.name.startswith("f16")]
        del field[:]
        field.extend(keep)
    nodes = [n for n in graph.node if "f16" not in n.input]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[GrpcServer]:
    s = GrpcServer("--repo", str(repo)).wait_ready()
    yield s
    stopped(s)


def stopped(server: Server) -> None:
    """SIGTERM stops HTTP and gRPC together, through the app's shutdown (uvicorn then ends by
    the signal, as it does without gRPC)."""
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()


@pytest.fixture(scope="module")
def client(server: GrpcServer) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(server.grpc_target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: GrpcServer) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[th.InferenceServerClient]:
    c = th.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def direct(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


CASES = {
    "side_effects": lambda: {"features": np.array([[20.0], [45.0], [90.0]], np.float32)},
    "tokens": lambda: byom.token_batch(rows=3, length=6),
    "digits_cnn": lambda: {"image": byom.digits_images(5)},
    "strings": lambda: {"text": np.array(["Hello", "Ünïcode", ""], dtype=object)},
}


def inputs(
    module: Any, feeds: dict[str, np.ndarray], types: dict[str, str] | None = None
) -> list[Any]:
    tensors = []
    for key, array in feeds.items():
        datatype = (types or {}).get(key) or DATATYPES[array.dtype.type]
        tensor = module.InferInput(key, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def texts(array: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]


def same(got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype == object:  # tritonclient gives BYTES back as bytes
        assert texts(got) == texts(want)
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_health_and_server_metadata(client, http):  # type: ignore[no-untyped-def]
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta == http.get_server_metadata()


@pytest.mark.parametrize("name", ["side_effects", "tokens", "strings"])
def test_model_metadata_is_the_http_metadata(client, http, name: str):  # type: ignore[no-untyped-def]
    meta = client.get_model_metadata(name, as_json=True)
    want = http.get_model_metadata(name)
    want.pop("parameters")  # Triton's gRPC ModelMetadataResponse has no parameters
    for tensor in meta["inputs"] + meta["outputs"]:
        tensor["shape"] = [int(s) for s in tensor["shape"]]  # int64 is a string in proto JSON
    assert meta == want
    assert client.get_model_metadata(name, "1", as_json=True)["name"] == name


def test_model_ready(client):  # type: ignore[no-untyped-def]
    assert client.is_model_ready("tokens") and client.is_model_ready("tokens", "1")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("tokens", "9")


@pytest.mark.parametrize("name", list(CASES))
def test_raw_answers_equal_onnxruntime_and_http(client, http, repo: Path, name: str):  # type: ignore[no-untyped-def]
    feeds = CASES[name]()
    want = direct(repo, name, feeds)
    result = client.infer(
        name, inputs(tg, feeds), outputs=[tg.InferRequestedOutput(n) for n in want]
    )
    over_http = http.infer(
        name, inputs(th, feeds), outputs=[th.InferRequestedOutput(n) for n in want]
    )
    for key, expected in want.items():
        same(result.as_numpy(key), expected)
        same(result.as_numpy(key), over_http.as_numpy(key))
    response = result.get_response(as_json=True)
    assert (response["model_name"], response["model_version"]) == (name, "1")


def test_no_outputs_named_gives_what_http_gives(client, http):  # type: ignore[no-untyped-def]
    feeds = CASES["side_effects"]()
    got = client.infer("side_effects", inputs(tg, feeds), request_id="r-7").get_response(
        as_json=True
    )
    want = http.infer("side_effects", inputs(th, feeds)).get_response()
    assert [o["name"] for o in got["outputs"]] == [o["name"] for o in want["outputs"]]
    assert got["id"] == "r-7"


def test_every_tensor_type_round_trips_raw(client):  # type: ignore[no-untyped-def]
    feeds = byom.dtype_batch()
    tensors = inputs(tg, feeds, {k: v[0] for k, v in byom.DTYPES.items()})
    outputs = [tg.InferRequestedOutput(f"{k}_out") for k in feeds]
    result = client.infer("dtypes", tensors, outputs=outputs)
    for key, array in feeds.items():
        same(result.as_numpy(f"{key}_out"), array)


def typed_request(model: str, feeds: dict[str, np.ndarray], datatypes: dict[str, str]) -> Any:
    request = pb.ModelInferRequest(model_name=model, id="typed")
    for key, array in feeds.items():
        tensor = request.inputs.add(name=key, datatype=datatypes[key], shape=array.shape)
        values = array.ravel().tolist()
        if datatypes[key] == "BYTES":
            values = [v.encode() for v in values]
        getattr(tensor.contents, CONTENTS[datatypes[key]]).extend(values)
    return request


def from_contents(tensor: Any) -> np.ndarray:
    from serving.protocol.codec import DTYPES

    values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
    return np.array(values, dtype=DTYPES[tensor.datatype]).reshape(list(tensor.shape))


def test_typed_contents_of_every_type_are_answered_typed(stub):  # type: ignore[no-untyped-def]
    feeds = {k: v for k, v in byom.dtype_batch().items() if k in TYPED}
    answer = stub.ModelInfer(typed_request("typed", feeds, {k: v[0] for k, v in TYPED.items()}))
    assert not answer.raw_output_contents and answer.id == "typed"
    got = {t.name: from_contents(t) for t in answer.outputs}
    for key, array in feeds.items():
        same(got[f"{key}_out"], array)


def test_typed_tokens_and_strings_equal_onnxruntime(stub, repo: Path):  # type: ignore[no-untyped-def]
    feeds = CASES["tokens"]()
    answer = stub.ModelInfer(typed_request("tokens", feeds, dict.fromkeys(feeds, "INT64")))
    want = direct(repo, "tokens", feeds)
    for tensor in answer.outputs:
        same(from_contents(tensor), want[tensor.name])
    text = CASES["strings"]()
    answer = stub.ModelInfer(typed_request("strings", text, {"text": "BYTES"}))
    lower = answer.outputs[0].contents.bytes_contents
    assert texts(np.array(lower, dtype=object)) == texts(direct(repo, "strings", text)["lower"])


def http_error(
    http: th.InferenceServerClient, name: str, feeds: dict[str, np.ndarray], types: dict[str, str]
) -> str:
    """The message of the v2 HTTP answer (binary tensors, as tritonclient sends them)."""
    with pytest.raises(InferenceServerException) as raised:
        http.infer(name, inputs(th, feeds, types))
    assert raised.value.status() == "400"
    return str(raised.value.message())


IDS = byom.token_batch(rows=1, length=3)
BAD = {
    "shape": ("digits_cnn", {"image": np.zeros((1, 1, 8, 7), np.float32)}, {"image": "FP32"}),
    "datatype": ("tokens", {"input_ids": IDS["input_ids"].astype(np.float32), "attention_mask": IDS["attention_mask"]},
                 {"input_ids": "FP32", "attention_mask": "INT64"}),
    "missing input": ("tokens", {"input_ids": IDS["input_ids"]}, {"input_ids": "INT64"}),
    "batch sizes": ("tokens", {"input_ids": IDS["input_ids"], "attention_mask": np.ones((2, 3), np.int64)},
                    {"input_ids": "INT64", "attention_mask": "INT64"}),
    "not finite": ("digits_cnn", {"image": np.full((1, 1, 8, 8), np.nan, np.float32)}, {"image": "FP32"}),
    "token past the table": ("tokens", {"input_ids": IDS["input_ids"] + 1000, "attention_mask": IDS["attention_mask"]},
                             {"input_ids": "INT64", "attention_mask": "INT64"}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_invalid_argument_with_the_http_message(client, http, stub, case: str):  # type: ignore[no-untyped-def]
    name, feeds, types = BAD[case]
    message = http_error(http, name, feeds, types)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(name, inputs(tg, feeds, types))
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == message
    with pytest.raises(grpc.RpcError) as typed:
        stub.ModelInfer(typed_request(name, feeds, types))
    assert typed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert typed.value.details() == message


def test_malformed_raw_and_typed_contents_are_invalid_argument(stub):  # type: ignore[no-untyped-def]
    request = pb.ModelInferRequest(model_name="side_effects")
    request.inputs.add(name="features", datatype="FP32", shape=[2, 1])
    request.raw_input_contents.append(b"\0" * 4)
    cases = {"holds 4 bytes but shape [2, 1] of FP32 needs 8": request}
    typed = pb.ModelInferRequest(model_name="typed")
    typed.CopyFrom(
        typed_request(
            "typed",
            {k: v for k, v in byom.dtype_batch().items() if k in TYPED},
            {k: v[0] for k, v in TYPED.items()},
        )
    )
    del typed.inputs[0].contents.uint_contents[:]
    typed.inputs[0].contents.uint_contents.extend([0, 256, 0, 1])
    cases["input 'u8': 256 is out of the range of UINT8"] = typed
    negative = pb.ModelInferRequest(model_name="side_effects")
    negative.inputs.add(
        name="features", datatype="FP32", shape=[-1, 1]
    ).contents.fp32_contents.append(1)
    cases["shape [-1, 1] has a negative dimension"] = negative
    unknown = typed_request("side_effects", CASES["side_effects"](), {"features": "FP32"})
    unknown.outputs.add(name="nope")
    cases["unknown output(s) ['nope']; the model has: scores, class_index, dense, dense_1"] = (
        unknown
    )
    for message, bad in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(bad)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in raised.value.details()


def test_unknown_model_and_version_are_not_found(client, server):  # type: ignore[no-untyped-def]
    feeds = CASES["side_effects"]()
    for model, version, path in [
        ("nope", "", "/v2/models/nope"),
        ("side_effects", "9", "/v2/models/side_effects/versions/9"),
    ]:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, inputs(tg, feeds), model_version=version)
        assert raised.value.status() == "StatusCode.NOT_FOUND"
        assert raised.value.message() == httpx.get(server.url + path).json()["error"]


def test_extensions_not_served_are_unimplemented_with_a_reason(client):  # type: ignore[no-untyped-def]
    for call, words in [  # config and statistics: tests/serving/test_extensions.py
        (client.get_system_shared_memory_status, "shared-memory extension"),
        (client.get_trace_settings, "trace extension"),
    ]:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
        assert words in raised.value.message()


def test_repository_index_unload_and_load(client, http):  # type: ignore[no-untyped-def]
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["spare"]["state"] == "READY" and index["spare"]["version"] == "1"
    client.unload_model("spare")
    assert not client.is_model_ready("spare") and not http.is_model_ready("spare")
    ready = client.get_model_repository_index(as_json=True)["models"]
    assert "spare" in {m["name"] for m in ready}
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("spare")
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    client.load_model("spare")
    assert client.is_model_ready("spare") and http.is_model_ready("spare")
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("spare", config='{"max_batch_size": 4}')
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "override config" in raised.value.message()


@pytest.fixture(scope="module")
def guarded(repo: Path) -> Iterator[GrpcServer]:
    """A server with an API key and a 4 KiB body limit."""
    env = {"SERVING_API_KEY": "s3cret", "SERVING_MAX_BODY_BYTES": "4096"}
    s = GrpcServer("--repo", str(repo), env=env).wait_ready()
    yield s
    stopped(s)


def test_api_key_and_body_limit(guarded: GrpcServer):
    client = tg.InferenceServerClient(guarded.grpc_target)
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    feeds = CASES["side_effects"]()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("side_effects", inputs(tg, feeds))
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    for headers in ({"authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
        result = client.infer("side_effects", inputs(tg, feeds), headers=headers)
        assert result.as_numpy("scores").shape == (3, 2)
    big = {"features": np.zeros((2000, 1), np.float32)}
    with pytest.raises(InferenceServerException) as raised:
        client.infer("side_effects", inputs(tg, big), headers={"x-api-key": "s3cret"})
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.close()


def test_a_grpc_port_in_use_stops_the_start(repo: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server("--repo", str(repo), "--grpc-port", str(port))
        code = server.process.wait(60)
        output = server.output()
    assert code == 2, output
    assert output.strip() == (
        f"error: cannot listen for gRPC on 127.0.0.1:{port}: Address already in use; "
        "stop what holds it, or pass another --grpc-port"
    )


def test_serving_with_grpc_imports_no_torch():
    code = (
        "import sys; from serving.ops.settings import Settings; from serving.http.app import create_app; "
        "import serving.grpc; create_app(Settings(grpc_port=1, allow_empty=True)); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("stage", ["serve-base", "serve-gpu"])
def test_the_image_and_the_manifests_expose_the_grpc_port(stage: str):
    from dockerfile_parse import DockerfileParser

    from tests.deploy.test_dockerfile import stages
    from tests.deploy.test_manifests import find, render

    parsed = stages(DockerfileParser(path=str(REPO / "Dockerfile")).structure)[stage]
    command = json.loads(next(i["value"] for i in parsed if i["instruction"] == "CMD"))
    port = command[command.index("--grpc-port") + 1]
    assert port in [i["value"] for i in parsed if i["instruction"] == "EXPOSE"]
    docs = render("overlays/cpu")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    grpc_port = next(p for p in container["ports"] if p["name"] == "grpc")
    assert str(grpc_port["containerPort"]) == port
    service = next(p for p in find(docs, "Service")["spec"]["ports"] if p["name"] == "grpc")
    assert service["targetPort"] == "grpc"


def test_every_worker_serves_grpc(repo: Path):
    """With --workers 2 each worker binds the gRPC port too (SO_REUSEPORT)."""
    port = free_port()
    server = Server("--repo", str(repo), "--workers", "2", "--grpc-port", str(port)).wait_ready()
    try:
        for _ in range(4):  # new connections, spread by the kernel
            client = tg.InferenceServerClient(f"127.0.0.1:{port}")
            deadline = time.monotonic() + 30  # the ready probe saw one worker; this may be the
            while not client.is_model_ready("side_effects"):  # other, still loading its models
                assert time.monotonic() < deadline, "the worker never became ready"
                time.sleep(0.05)
            result = client.infer("side_effects", inputs(tg, CASES["side_effects"]()))
            assert result.as_numpy("class_index").shape == (3,)
            client.close()
    finally:
        output = server.output()
    assert output.count("over gRPC on 127.0.0.1") == 2, output
