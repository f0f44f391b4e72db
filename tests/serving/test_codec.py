"""The v2 codec's plain path: what it takes, it decodes exactly as the full validation does.

`decode_request` decodes the common request (one tensor in JSON or as the whole binary part,
no parameters, no outputs) by hand
and leaves everything else to pydantic's validation; the HTTP tests in test_v2.py check the
errors, these check that the two paths can never disagree.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import orjson
import pytest

import inference
from serving.core.errors import BadRequest
from serving.protocol import codec
from tests.conftest import MODELS

META = inference.load(MODELS / "iris").metadata
SIGNATURE = META.inputs[0]
ROW = [5.1, 3.5, 1.4, 0.2]


def tensor(data: Any, shape: Any = None, **extra: Any) -> dict[str, Any]:
    shape = shape if shape is not None else list(np.shape(data))
    return {"name": SIGNATURE.name, "datatype": "FP32", "shape": shape, "data": data, **extra}


def full_path(document: Any) -> codec.DecodedRequest:
    return codec._validated_request(document, b"", META)


TAKEN = {
    "flat": {"inputs": [tensor(ROW, [1, 4])]},
    "nested": {"inputs": [tensor([ROW, ROW])]},
    "integers": {"inputs": [tensor([[5, 3, 1, 0]])]},
    "with an id": {"id": "42", "inputs": [tensor([ROW])]},
    "extra keys": {"model_name": "iris", "inputs": [tensor([ROW], x_note="kept out")]},
    "null id": {"id": None, "inputs": [tensor([ROW])]},
    "empty batch": {"inputs": [tensor([], [0, 4])]},
    "large and small values": {"inputs": [tensor([[1e-40, -3e38, 3.4e38, 0.0]])]},
}


@pytest.mark.parametrize("document", TAKEN.values(), ids=TAKEN.keys())
def test_what_the_plain_path_takes_equals_the_full_validation(document: dict[str, Any]):
    plain = codec._plain_request(document, SIGNATURE)
    assert plain is not None
    full = full_path(document)
    assert (plain.id, plain.outputs, plain.binary_flags, plain.binary_default) == (
        full.id,
        full.outputs,
        full.binary_flags,
        full.binary_default,
    )
    assert plain.inputs.keys() == full.inputs.keys()
    for name, array in plain.inputs.items():
        assert array.dtype == full.inputs[name].dtype == np.float32
        assert array.shape == full.inputs[name].shape
        np.testing.assert_array_equal(array, full.inputs[name])


LEFT = {
    "a number as id": {"id": 42, "inputs": [tensor([ROW])]},
    "an id beyond ASCII": {"id": "été", "inputs": [tensor([ROW])]},
    "parameters": {"parameters": {"binary_data_output": True}, "inputs": [tensor([ROW])]},
    "outputs": {"inputs": [tensor([ROW])], "outputs": [{"name": "scores"}]},
    "tensor parameters": {"inputs": [tensor([ROW], parameters={"x": 1})]},
    "two inputs": {"inputs": [tensor([ROW]), tensor([ROW])]},
    "no inputs": {"inputs": []},
    "inputs not a list": {"inputs": tensor([ROW])},
    "wrong name": {"inputs": [{**tensor([ROW]), "name": "x"}]},
    "wrong datatype": {"inputs": [{**tensor([ROW]), "datatype": "FP64"}]},
    "a float in the shape": {"inputs": [tensor([ROW], [1.0, 4])]},
    "a string in the shape": {"inputs": [tensor([ROW], ["1", 4])]},
    "a bool in the shape": {"inputs": [tensor([ROW], [True, 4])]},
    "negative shape": {"inputs": [tensor([ROW], [-1, 4])]},
    "shape not the model's": {"inputs": [tensor([ROW[:2], ROW[:2]])]},
    "shape of another rank": {"inputs": [tensor(ROW, [4])]},
    "too few values": {"inputs": [tensor(ROW[:3], [1, 4])]},
    "booleans": {"inputs": [tensor([[True, False, True, False]])]},
    "strings": {"inputs": [tensor([["5.1", "3.5", "1.4", "0.2"]])]},
    "null values": {"inputs": [tensor([[None, 3.5, 1.4, 0.2]])]},
    "ragged": {"inputs": [tensor([ROW, ROW[:3]], [2, 4])]},
    "data not a list": {"inputs": [tensor(5.1, [1, 4])]},
    "no data": {"inputs": [{k: v for k, v in tensor([ROW]).items() if k != "data"}]},
    "not an object": [tensor([ROW])],
}


@pytest.mark.parametrize("document", LEFT.values(), ids=LEFT.keys())
def test_everything_else_is_left_to_the_full_validation(document: Any):
    assert codec._plain_request(document, SIGNATURE) is None


def binary_tensor(rows: int = 1, **extra: Any) -> dict[str, Any]:
    size = rows * len(ROW) * 4
    shape = [rows, len(ROW)]
    return {"name": SIGNATURE.name, "datatype": "FP32", "shape": shape,
            "parameters": {"binary_data_size": size}, **extra}  # fmt: skip


BLOB = np.float32([ROW, ROW[::-1]]).tobytes()
BINARY_TAKEN = {
    "one row": ({"inputs": [binary_tensor()]}, BLOB[:16]),
    "two rows, an id": ({"id": "7", "inputs": [binary_tensor(2)]}, BLOB),
    "extra keys": ({"model_name": "iris", "inputs": [binary_tensor(x_note=1)]}, BLOB[:16]),
}


@pytest.mark.parametrize(("document", "blob"), BINARY_TAKEN.values(), ids=BINARY_TAKEN.keys())
def test_a_binary_tensor_the_plain_path_takes_equals_the_full_validation(
    document: dict[str, Any], blob: bytes
):
    plain = codec._plain_request(document, SIGNATURE, blob)
    assert plain is not None
    full = codec._validated_request(document, blob, META)
    assert (plain.id, plain.outputs, plain.binary_flags) == (full.id, None, {})
    array = plain.inputs[SIGNATURE.name]
    assert array.dtype == full.inputs[SIGNATURE.name].dtype == np.float32
    np.testing.assert_array_equal(array, full.inputs[SIGNATURE.name])
    np.testing.assert_array_equal(array, np.frombuffer(blob, np.float32).reshape(-1, 4))


BINARY_LEFT = {
    "a size that does not fit the shape": {"inputs": [{**binary_tensor(), "shape": [2, 4]}]},
    "the size as a string": {"inputs": [binary_tensor(parameters={"binary_data_size": "16"})]},
    "the size as a float": {"inputs": [binary_tensor(parameters={"binary_data_size": 16.0})]},
    "the size as a bool": {"inputs": [binary_tensor(parameters={"binary_data_size": True})]},
    "more parameters": {
        "inputs": [binary_tensor(parameters={"binary_data_size": 16, "binary_data": True})]
    },
    "data as well": {"inputs": [binary_tensor(data=ROW)]},
    "no size": {"inputs": [binary_tensor(parameters={})]},
    "JSON data only": {"inputs": [tensor([ROW])]},
    "wrong datatype": {"inputs": [binary_tensor(datatype="FP64")]},
    "BYTES": {"inputs": [binary_tensor(datatype="BYTES")]},
    "outputs": {"inputs": [binary_tensor()], "outputs": [{"name": "scores"}]},
    "two inputs": {"inputs": [binary_tensor(), binary_tensor()]},
}


@pytest.mark.parametrize("document", BINARY_LEFT.values(), ids=BINARY_LEFT.keys())
def test_any_other_binary_request_is_left_to_the_full_validation(document: Any):
    assert codec._plain_request(document, SIGNATURE, BLOB[:16]) is None


def test_a_binary_part_longer_or_shorter_than_the_tensor_is_left_to_the_full_validation():
    document = {"inputs": [binary_tensor()]}
    for blob in (BLOB, BLOB[:12]):
        assert codec._plain_request(document, SIGNATURE, blob) is None
        with pytest.raises(BadRequest, match="binary"):
            codec.decode_request(codec.Body(orjson.dumps(document), blob), META)


@pytest.mark.parametrize("count", [1, codec.SMALL, codec.SMALL + 4])
def test_a_float_too_large_for_fp32_becomes_infinity_without_a_warning(count: int):
    values = np.full((1, count), 1.0)
    values[0, -1] = -1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cast = codec._cast(values, np.dtype(np.float32))
    assert cast.dtype == np.float32
    assert np.isneginf(cast[0, -1]) and (cast[0, :-1] == 1.0).all()


def test_decode_request_takes_the_plain_path_and_the_full_one_alike():
    plain = orjson.dumps({"inputs": [tensor([ROW])]})
    full = orjson.dumps({"inputs": [tensor([ROW])], "outputs": [{"name": "scores"}]})
    for header, outputs in ((plain, None), (full, ["scores"])):
        decoded = codec.decode_request(codec.Body(header, b""), META)
        assert decoded.outputs == outputs
        np.testing.assert_array_equal(decoded.inputs[SIGNATURE.name], np.float32([ROW]))
    with pytest.raises(BadRequest, match="'data' must hold FP32 numbers, got booleans"):
        codec.decode_request(
            codec.Body(orjson.dumps({"inputs": [tensor([[True] * 4])]}), b""), META
        )


@pytest.mark.parametrize(
    "data", [[[5.1, 3.5, True, 0.2]], [ROW] * 20 + [[0, 1, 2, False]], [[[5.1, 3.5], [1, True]]]]
)
def test_true_or_false_among_numbers_is_refused_not_read_as_one_or_zero(data: Any):
    body = codec.Body(orjson.dumps({"inputs": [tensor(data, [len(data), 4])]}), b"")
    assert codec.mentions_booleans(body)
    with pytest.raises(
        BadRequest, match="'data' must hold FP32 numbers, got true/false among them"
    ):
        codec.decode_request(body, META)


def test_the_words_true_and_false_elsewhere_change_nothing():
    body = codec.Body(orjson.dumps({"id": "true or false", "inputs": [tensor([ROW])]}), b"")
    assert codec.mentions_booleans(body)
    decoded = codec.decode_request(body, META)
    assert decoded.id == "true or false"
    np.testing.assert_array_equal(decoded.inputs[SIGNATURE.name], np.float32([ROW]))


def test_outputs_of_any_layout_encode_flat():
    decoded = codec.decode_request(codec.Body(orjson.dumps({"inputs": [tensor([ROW])]}), b""), META)
    strided = np.arange(6, dtype=np.int64)[::2]
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    body, _ = codec.encode_response({"class_index": strided, "scores": transposed}, META, decoded)
    outputs = {o["name"]: o for o in orjson.loads(body)["outputs"]}
    assert outputs["class_index"]["data"] == [0, 2, 4]
    assert outputs["scores"]["shape"] == [3, 2]
    assert outputs["scores"]["data"] == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def integer_model(datatype: str) -> tuple[inference.BundleMetadata, inference.metadata.InputInfo]:
    """The iris metadata with its input declared as `datatype` (no bundle here has one)."""
    signature = SIGNATURE.model_copy(update={"datatype": datatype})
    return META.model_copy(update={"inputs": [signature]}), signature


@pytest.mark.parametrize(
    ("datatype", "values", "outside"),
    [
        ("INT32", [1, 2**31, 3, 4], 2**31),
        ("INT32", [1, -(2**31) - 1, 3, 4], -(2**31) - 1),
        ("UINT8", [1, -1, 3, 4], -1),
        ("UINT8", [1, 256, 3, 4], 256),
        ("UINT64", [1, 2**64, 3, 4], 2**64),
        ("INT64", [-1, 2**64 - 1, 3, 4], 2**64 - 1),
        ("INT64", [1, 2**70, 3, 4], 2**70),
        ("UINT64", [1, -1, 3, 4], -1),
        ("INT8", [0, 1, 2, 3] * 5 + [0, 1, 2, 128], 128),
    ],
)
def test_integers_out_of_range_are_refused_not_wrapped(
    datatype: str, values: list[int], outside: int
):
    meta, signature = integer_model(datatype)
    document = {"inputs": [{**tensor([values]), "datatype": datatype}]}
    assert codec._plain_request(document, signature) is None
    message = f"input 'features': {outside} is out of the range of {datatype}"
    with pytest.raises(BadRequest, match=message):
        codec._validated_request(document, b"", meta)


@pytest.mark.parametrize("datatype", ["INT8", "INT32", "INT64", "UINT8", "UINT64"])
def test_integers_in_range_take_both_paths_alike(datatype: str):
    meta, signature = integer_model(datatype)
    info = np.iinfo(codec.DTYPES[datatype])
    values = [int(info.min), 0, 1, int(info.max)]
    document = {"inputs": [{**tensor([values]), "datatype": datatype}]}
    plain = codec._plain_request(document, signature)
    assert plain is not None
    full = codec._validated_request(document, b"", meta)
    for decoded in (plain, full):
        array = decoded.inputs[SIGNATURE.name]
        assert array.dtype == codec.DTYPES[datatype]
        assert array.tolist() == [values]


def test_fractions_are_still_named_for_integer_inputs():
    meta, _ = integer_model("INT64")
    document = {"inputs": [{**tensor([[1, 2.5, 3, 4]]), "datatype": "INT64"}]}
    with pytest.raises(BadRequest, match="'data' must hold INT64 numbers, got fractions"):
        codec._validated_request(document, b"", meta)
