"""Hostile input (issue 26) against a real server on 127.0.0.1: each reproduction ends in a clear
refusal (4xx with a JSON `{"error"}` naming the problem), in bounded memory, and the good
requests keep being answered."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
