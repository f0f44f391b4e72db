"""Hostile input (issue 26) against a real server on 127.0.0.1: each reproduction ends in a clear
refusal (4xx with a JSON `{"error"}` naming the problem), in bounded memory, and the good
requests keep being answered."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import MODELS
from tests.serving.conftest import Server

MIB = 1 << 20
V1 = "/v1/models/side_effects:predict"
V2 = "/v2/models/side_effects/infer"
ROW = {"instances": [[70]]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("hostile") / "models"
    shutil.copytree(MODELS, target)
    return target


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    s = Server("--repo", str(repo)).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def memory_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB: VmRSS (now) or VmHWM (the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return str(message)


def v2_tensor(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 1], **fields}]}


# item 2: one long string among numbers made numpy build fixed-width text for every element


def long_text_bodies() -> list[tuple[str, bytes]]:
    text = "x" * 1_000_000
    big = "x" * 5_000_000
    many = [[1]] * 499
    return [
        ("v1 rows", json.dumps({"instances": [[text], *many]}).encode()),
        ("v1 rows, 10 MB", json.dumps({"instances": [[big], *[[1]] * 1_200_000]}).encode()),
        ("v1 records", json.dumps({"instances": [{"age": text}] + [{"age": 1}] * 499}).encode()),
        ("v1 columns", json.dumps({"inputs": {"age": [text] + [1] * 499}}).encode()),
        ("v1 inputs", json.dumps({"inputs": [[text], *many]}).encode()),
        (
            "v2 JSON",
            json.dumps(v2_tensor(shape=[500, 1], data=[text] + [1] * 499)).encode(),
        ),
        (
            "v2 JSON nested",
            json.dumps(v2_tensor(shape=[500, 1], data=[[text], *many])).encode(),
        ),
    ]


def test_long_text_among_numbers_is_refused_in_bounded_memory(
    server: Server, http: httpx.Client
) -> None:
    pid = server.process.pid
    before = memory_kib(pid, "VmRSS")
    for label, body in long_text_bodies():
        path = V2 if label.startswith("v2") else V1
        response = http.post(path, content=body, headers={"content-type": "application/json"})
        message = refused(response, 400 if "10 MB" not in label else response.status_code)
        assert len(message) < 300, f"{label}: the message echoes the input: {len(message)}"
        assert response.status_code in (400, 413), (label, message)
    growth = (memory_kib(pid, "VmHWM") - before) / 1024
    print(f"peak memory growth over {len(long_text_bodies())} bodies: {growth:.0f} MiB")
    assert growth < 300, f"peak memory grew by {growth:.0f} MiB"
    assert http.post(V1, json=ROW).status_code == 200


def test_text_is_still_text_for_a_bytes_input_and_refused_for_numbers(http: httpx.Client) -> None:
    refused(http.post(V1, json={"instances": [["abc"]]}), 400, "text such as 'abc'")
    refused(http.post(V1, json={"instances": [["1.5"]]}), 400, "quoted numbers")
    refused(http.post(V2, json=v2_tensor(data=["abc"])), 400, "FP32", "'abc'")
    refused(http.post(V1, json={"instances": [["x"] * 3, [1]]}), 400)


def test_gzip_bomb_and_junk(http: httpx.Client) -> None:
    body = gzip.compress(json.dumps(ROW).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    assert http.post(V1, content=body, headers=headers).status_code == 200
    refused(http.post(V1, content=body + b"junk", headers=headers), 400, "gzip")
    refused(http.post(V1, content=body[:-6], headers=headers), 400, "gzip")


# item 11: a bundle names only files inside its version folder, and says nothing of others


def bundle_pointing(repo: Path, name: str, file: str, link: Path | None = None) -> None:
    """A model `name` in the repository: side_effects' bundle whose overlay names `file`, a link
    to `link` where given."""
    version = repo / name / "1"
    shutil.copytree(repo / "side_effects" / "1", version)
    overlay = json.loads((version / "metadata.json").read_text())
    overlay["onnx"]["file"] = file
    (version / "metadata.json").write_text(json.dumps(overlay))
    if link is not None:
        (version / file).symlink_to(link)


@pytest.mark.parametrize(
    ("name", "file", "outside"),
    [
        ("up", "../model.onnx", None),
        ("absolute", "/etc/hostname", None),
        ("link_to_graph", "elsewhere.onnx", "graph"),
        ("link_to_secret", "secret.onnx", "secret"),
    ],
)
def test_a_bundle_cannot_point_outside_itself(
    repo: Path, http: httpx.Client, tmp_path: Path, name: str, file: str, outside: str | None
) -> None:
    link = None
    if outside == "graph":  # the right checksum, but outside the bundle
        link = tmp_path / "model.onnx"
        shutil.copy(repo / "side_effects" / "1" / "model.onnx", link)
    elif outside == "secret":
        link = tmp_path / "secret"
        link.write_text("not for clients\n")
    bundle_pointing(repo, name, file, link)
    message = refused(http.post(f"/v2/repository/models/{name}/load"), 400, "failed to load")
    assert "outside the version folder" in message or "in the version folder" in message
    assert str(tmp_path) not in message and "not for clients" not in message
    assert not re.search(r"[0-9a-f]{64}", message), message
    refused(http.get(f"/v2/models/{name}/ready"), 503)
    assert http.post(V1, json=ROW).status_code == 200


def test_a_link_inside_the_bundle_is_followed(repo: Path, http: httpx.Client) -> None:
    version = repo / "inner_link" / "1"
    shutil.copytree(repo / "side_effects" / "1", version)
    (version / "data").mkdir()
    (version / "model.onnx").rename(version / "data" / "model.onnx")
    (version / "model.onnx").symlink_to(Path("data") / "model.onnx")
    assert http.post("/v2/repository/models/inner_link/load").status_code == 200
    assert http.post("/v1/models/inner_link:predict", json=ROW).status_code == 200


# item 7: the repository API's parameters


@pytest.mark.parametrize("parameters", [5, [1], True, "x", 1.5])
def test_load_parameters_must_be_an_object(http: httpx.Client, parameters: Any) -> None:
    response = http.post("/v2/repository/models/side_effects/load", json={"parameters": parameters})
    refused(response, 400, "'parameters' must be a JSON object")


def test_load_body_and_index_shapes(http: httpx.Client) -> None:
    load = "/v2/repository/models/side_effects/load"
    assert http.post(load, json={"parameters": {}}).status_code == 200
    assert http.post(load, json={"parameters": None}).status_code == 200
    refused(http.post(load, json=[1]), 400, "JSON object")
    refused(http.post("/v2/repository/index", json={"ready": "yes"}), 400, "'ready'")
    assert http.post("/v2/repository/index", json={"ready": True}).status_code == 200


# item 8: a client's control characters never start a line of the log


def test_control_characters_never_forge_a_log_line(repo: Path) -> None:
    forged = "FORGED ERROR serving: model reloaded by admin"
    s = Server("--repo", str(repo), "--log-level", "info").wait_ready()
    try:
        with httpx.Client(base_url=s.url) as c:
            for path in (
                f"/v2/models/x%0A{forged.replace(' ', '%20')}/infer",
                f"/v1/models/x%0D%0A{forged.replace(' ', '%20')}:predict",
                f"/v2/models/x%1B%5B31m%0A{forged.replace(' ', '%20')}/infer",
            ):
                assert c.post(path, json=ROW).status_code in (404, 405)
    finally:
        output = s.output()
    lines = output.splitlines()
    assert not any(line.startswith("FORGED") for line in lines), output
    assert "x\\nFORGED" in output and "\\x1b" in output, output
    assert "\x1b" not in output and "\r" not in output


# item 12: what the protocol does not allow is refused, not read leniently


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({**v2_tensor(data=[70]), "outputs": [{"name": "scores", "parameters": {"binary_data": "false"}}]}, "'binary_data' must be true or false"),
        ({**v2_tensor(data=[70]), "parameters": {"binary_data_output": "false"}}, "'binary_data_output'"),
        (v2_tensor(shape=[True, 1], data=[70]), "shape"),
        (v2_tensor(shape=[1.0, 1], data=[70]), "shape"),
        (v2_tensor(shape=[2], data=[[70], [71]]), "nested as [2, 1]"),
        (v2_tensor(shape=[1, 1], data=[[[70]]]), "nested as [1, 1, 1]"),
    ],
)  # fmt: skip
def test_lenient_v2_requests_are_refused(
    http: httpx.Client, body: dict[str, Any], words: str
) -> None:
    refused(http.post(V2, json=body), 400, words)


def test_data_beside_binary_data_size_is_refused(http: httpx.Client) -> None:
    tensor = v2_tensor(data=[70], parameters={"binary_data_size": 4})
    header = json.dumps(tensor).encode()
    response = http.post(
        V2,
        content=header + struct.pack("<f", 70.0),
        headers={"inference-header-content-length": str(len(header))},
    )
    refused(response, 400, "both 'data' and binary_data_size")


@pytest.mark.parametrize("version", [" 1", "1 ", "+1", "1_0", "\u0661"])
def test_a_version_is_plain_digits(http: httpx.Client, version: str) -> None:
    path = f"/v2/models/side_effects/versions/{quote(version)}/infer"
    refused(http.post(path, json=v2_tensor(data=[70])), 400, "positive integer")
    ok = http.post("/v2/models/side_effects/versions/1/infer", json=v2_tensor(data=[70]))
    assert ok.status_code == 200


def log_model(folder: Path) -> None:
    """A bare graph y = log(x): NaN for a negative x, minus infinity for 0."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")


def test_non_finite_outputs_are_an_error_in_json_and_binary(repo: Path, http: httpx.Client) -> None:
    log_model(repo / "log" / "1")
    assert http.post("/v2/repository/models/log/load").status_code == 200
    infer = "/v2/models/log/infer"
    x = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1, -1]}]}
    binary = {**x, "parameters": {"binary_data_output": True}}
    for body in (x, binary):
        refused(http.post(infer, json=body), 500, "output 'y' is NaN or infinite in row 1")
    refused(http.post("/v1/models/log:predict", json={"instances": [[0]]}), 500, "'y'")
    answer = http.post(infer, json={**x, "inputs": [{**x["inputs"][0], "data": [1, 2]}]})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"][0] == 0
