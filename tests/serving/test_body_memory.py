"""Memory per request body (issue 26, item 2): JSON is bounded by `max_json_body_bytes` and
costs at most `JSON_MEMORY_FACTOR` times its size to decode; binary tensors go up to
`max_body_bytes`."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

import inference
from serving.core.errors import PayloadTooLarge
from serving.http.routes import v1
from serving.protocol import codec
from tests.conftest import MODELS
from tests.serving.conftest import ClientFactory

KIB = 1 << 10
MIB = 1 << 20
JSON = {"content-type": "application/json"}
V1 = "/v1/models/side_effects:predict"
V2 = "/v2/models/side_effects/infer"


def v2_json(values: list[Any], shape: list[int], name: str = "features") -> bytes:
    tensor = {"name": name, "datatype": "FP32", "shape": shape, "data": values}
    return orjson.dumps({"inputs": [tensor]})


def v2_binary(array: np.ndarray, name: str = "features") -> tuple[bytes, dict[str, str]]:
    blob = array.astype("<f4").tobytes()
    tensor = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]})
    return header + blob, {"inference-header-content-length": str(len(header))}


def test_json_over_its_limit_is_413_and_binary_of_that_size_is_served(
    make_client: ClientFactory,
) -> None:
    client = make_client(max_json_body_bytes=64 * KIB, max_body_bytes=1 * MIB)
    ages = np.linspace(20, 80, 20_000)  # ~100 KiB as JSON or as binary
    for path, body in (
        (V1, orjson.dumps({"instances": ages[:, None].tolist()})),
        (V2, v2_json(ages.tolist(), [len(ages), 1])),
    ):
        assert len(body) > 64 * KIB
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code == 413, response.text
        assert "max_json_body_bytes (65536 bytes)" in response.json()["error"]
        assert "binary" in response.json()["error"]
    binary, headers = v2_binary(ages[:, None])
    assert 64 * KIB < len(binary) < 1 * MIB
    response = client.post(V2, content=binary, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"][0] == len(ages)


def test_the_json_limit_holds_after_decompression_and_for_a_binary_request_header(
    make_client: ClientFactory,
) -> None:
    client = make_client(max_json_body_bytes=64 * KIB)
    body = orjson.dumps({"instances": [[50.0]] * 20_000})
    headers = {**JSON, "content-encoding": "gzip"}
    response = client.post(V1, content=gzip.compress(body), headers=headers)
    assert response.status_code == 413, response.text
    assert "max_json_body_bytes" in response.json()["error"]
    header = v2_json([50.0] * 20_000, [20_000, 1])  # a JSON header that is all the JSON body
    response = client.post(
        V2, content=header, headers={"inference-header-content-length": str(len(header))}
    )
    assert response.status_code == 413, response.text


def peak_multiple(decode: Callable[[bytes], Any], body: bytes) -> float:
    """The most memory decoding `body` held at once, as a multiple of its size."""
    tracemalloc.start()
    try:
        decode(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / len(body)


def decode_v2(model: inference.Model) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        body = codec.split_body(raw, JSON, 64 * MIB, 64 * MIB)
        return model.check(codec.decode_request(body, model.metadata).inputs)

    return decode


def decode_v1(model: inference.Model) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        return model.check(v1.decode(codec.split_body(raw, JSON, 64 * MIB, 64 * MIB), model)[0])

    return decode


SIZE = MIB // 2
"""Bodies of about this size (up to twice it): the multiples are those of 8 MiB bodies, and
tracing millions of allocations is slow."""
RNG = np.random.default_rng(0)
PIXELS = np.round(RNG.uniform(0, 1, (SIZE // (64 * 7), 8, 8, 1)), 4)
DIGITS = RNG.integers(0, 10, (SIZE // 4, 1))
"""Single digits: the most values, so the most Python objects, per byte of JSON."""


@pytest.mark.parametrize(
    ("model_name", "form", "document"),
    [
        ("digits", "v2", v2_json(PIXELS.ravel().tolist(), list(PIXELS.shape))),
        ("digits", "v2", v2_json(PIXELS.tolist(), list(PIXELS.shape))),
        ("side_effects", "v2", v2_json(DIGITS.ravel().tolist(), list(DIGITS.shape))),
        ("side_effects", "v1", orjson.dumps({"instances": DIGITS.tolist()})),
        ("side_effects", "v1", orjson.dumps({"instances": DIGITS.ravel().tolist()})),
        ("side_effects", "v1", orjson.dumps({"inputs": {"age": DIGITS.ravel().tolist()}})),
        ("digits", "v1", orjson.dumps({"instances": PIXELS.tolist()})),
    ],
    ids=[
        "v2-flat",
        "v2-nested",
        "v2-flat-digits",
        "v1-rows-digits",
        "v1-bare-digits",
        "v1-columns-digits",
        "v1-tensors",
    ],
)
def test_decoding_json_takes_at_most_the_documented_multiple_of_its_size(
    model_name: str, form: str, document: bytes
) -> None:
    model = inference.load(MODELS / model_name)
    decode = decode_v2(model) if form == "v2" else decode_v1(model)
    multiple = peak_multiple(decode, document)
    assert multiple <= codec.JSON_MEMORY_FACTOR, f"{multiple:.1f}x its size"


def test_the_json_limit_is_checked_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge, match="max_json_body_bytes"):
        codec.split_body(b"[" + b"1," * 100 + b"1]", JSON, 1000, 100)
