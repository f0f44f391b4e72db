"""A real `python -m serving` on 127.0.0.1, driven by real clients (tritonclient, httpx)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import inference
from tests.conftest import MODELS
from tests.serving.conftest import Server, run_cli

SIDE_EFFECTS = inference.load(MODELS / "side_effects")
IRIS = inference.load(MODELS / "iris")
AGES = np.arange(13, 101, dtype=np.float32).reshape(-1, 1)


@pytest.fixture(scope="module")
def triton_client(server: Server):  # type: ignore[no-untyped-def]
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


def test_tritonclient_health_and_metadata(triton_client):  # type: ignore[no-untyped-def]
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("side_effects")
    assert triton_client.is_model_ready("iris", "1")
    assert not triton_client.is_model_ready("nope")
    meta = triton_client.get_model_metadata("iris")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("version", ["", "1"])
def test_tritonclient_infer_equals_in_process(triton_client, binary: bool, version: str):  # type: ignore[no-untyped-def]
    tensor = triton.InferInput("features", list(AGES.shape), "FP32")
    tensor.set_data_from_numpy(AGES, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "class_index")
    ]
    result = triton_client.infer(
        "side_effects", [tensor], model_version=version, outputs=outputs, request_id="r1"
    )
    expected = SIDE_EFFECTS.predict(AGES)
    np.testing.assert_allclose(result.as_numpy("scores"), expected.scores, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("class_index"), expected.class_index)
    assert result.get_response()["id"] == "r1"


def test_tritonclient_defaults_binary_everything(triton_client):  # type: ignore[no-untyped-def]
    rows = np.random.default_rng(3).normal(4, 2, size=(300, 4)).astype(np.float32)
    tensor = triton.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # binary by default; no outputs → binary_data_output
    result = triton_client.infer("iris", [tensor])
    np.testing.assert_allclose(result.as_numpy("scores"), IRIS.predict(rows).scores, atol=1e-6)
    assert result.as_numpy("dense") is None  # hidden layers only on request


def test_tritonclient_compressed_request(triton_client):  # type: ignore[no-untyped-def]
    tensor = triton.InferInput("features", [2, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[70.0], [20.0]], np.float32))
    result = triton_client.infer(
        "side_effects",
        [tensor],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert result.as_numpy("class_index").tolist() == [1, 0]


def test_tritonclient_errors_carry_our_message(triton_client):  # type: ignore[no-untyped-def]
    tensor = triton.InferInput("features", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 2), np.float32))
    with pytest.raises(
        InferenceServerException,
        match=r"input 'features': expected shape \[-1, 1\] \(-1: any size\), got \[1, 2\]",
    ):
        triton_client.infer("side_effects", [tensor])
    with pytest.raises(InferenceServerException, match=r"unknown model 'nope'"):
        triton_client.get_model_metadata("nope")


def test_tritonclient_repository_extension(triton_client):  # type: ignore[no-untyped-def]
    index = triton_client.get_model_repository_index()
    assert {m["name"] for m in index} == {"digits", "iris", "side_effects"}
    triton_client.unload_model("iris")
    assert not triton_client.is_model_ready("iris")
    triton_client.load_model("iris")
    assert triton_client.is_model_ready("iris")


def test_httpx_v1_and_v2_json(server: Server):
    with httpx.Client(base_url=server.url) as client:
        body = client.post(
            "/v1/models/side_effects:predict",
            json={"instances": [{"age": float(a)} for a in AGES[:, 0]]},
        ).json()
        assert [p["label"] for p in body["predictions"]] == SIDE_EFFECTS.predict(AGES).labels
        v2 = client.post(
            "/v2/models/side_effects/infer",
            json={
                "inputs": [
                    {
                        "name": "features",
                        "datatype": "FP32",
                        "shape": list(AGES.shape),
                        "data": AGES.ravel().tolist(),
                    }
                ]
            },
        ).json()
        scores = np.reshape(v2["outputs"][0]["data"], (-1, 2))
        np.testing.assert_allclose(scores, SIDE_EFFECTS.predict(AGES).scores, atol=1e-6)


def test_sigterm_drains_a_request_in_flight():
    server = Server("--repo", "models").wait_ready()
    body = json.dumps({"instances": [70, 20]}).encode()
    head = (
        f"POST /v1/models/side_effects:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + body[:5])  # the request has started ...
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)  # ... when the pod is told to stop
        time.sleep(0.5)
        sock.sendall(body[5:])  # the rest arrives; the request must still be answered
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"label":"side_effects"' in answer
    # uvicorn finishes gracefully, then re-raises the SIGTERM it caught (exit status -15)
    assert server.process.wait(30) == -signal.SIGTERM
    assert "Finished server process" in server.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live", timeout=2)


@pytest.mark.slow
def test_several_workers_serve():
    server = Server("--repo", "models", "--workers", "2").wait_ready()
    try:
        with httpx.Client(base_url=server.url) as client:
            answers = {
                client.post(
                    "/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
                ).json()["predictions"][0]["label"]
                for _ in range(20)
            }
        assert answers == {"setosa"}
    finally:
        assert server.stop() in (0, -signal.SIGTERM)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(
            ["--providers", "cuda"],
            {},
            "execution provider 'cuda' (CUDAExecutionProvider) is not available",
            marks=pytest.mark.skipif(
                "CUDAExecutionProvider" in ort.get_available_providers(),
                reason="this onnxruntime has CUDA",
            ),
        ),
        (["--providers", "tpu"], {}, "unknown execution provider 'tpu'"),
        (["--repo", "no/such/folder"], {}, "model repository no/such/folder is not a folder"),
        (
            ["--repo", "docs"],  # a folder, but no model in it: a wrong --repo, most likely
            {},
            "model repository docs holds no model folder: put a model in docs/<name>/1/model.onnx "
            "(or pass --allow-empty)",
        ),
        ([], {"SERVING_PORT": "eighty"}, "invalid settings: port: Input should be a valid integer"),
        (["--settings-file", "missing.yaml"], {}, "settings file missing.yaml"),
        (
            ["--models", "iris,sideeffects"],
            {},
            "model(s) sideeffects are not in the repository models",
        ),
    ],
)
def test_startup_errors_are_one_line(args: list[str], env: dict[str, str], message: str):
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_empty_repository_starts_when_asked(tmp_path: Path):
    server = Server("--repo", str(tmp_path), "--allow-empty").wait_ready()
    try:
        assert httpx.get(f"{server.url}/v1/models").json() == {"models": []}
    finally:
        server.stop()


def test_cuda_with_fallback_starts_on_cpu():
    server = Server(
        "--repo", "models", "--providers", "cuda,cpu", "--allow-cpu-fallback"
    ).wait_ready()
    try:
        meta = httpx.get(f"{server.url}/v2/models/iris").json()
        assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    finally:
        server.stop()
    assert "falling back to CPU" in server.output()
