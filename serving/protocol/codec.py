"""Open Inference Protocol v2 tensors ↔ numpy, in JSON and in Triton's binary tensor extension.

Requests: the body may be gzip/deflate encoded (`Content-Encoding`); with
`Inference-Header-Content-Length: n` its first n bytes are the JSON header and the rest the
binary tensors, in input order, sized by each input's `binary_data_size`. Responses: an output
is binary when its request output says `binary_data: true`, or the request parameter
`binary_data_output` is true and the output does not say otherwise; then the JSON header comes
first, its length in `Inference-Header-Content-Length`, and the bytes follow. BYTES tensors
(ONNX strings) are JSON strings, or in binary each element's 4-byte little-endian length and
then its UTF-8 bytes, as Triton sends them.

The codec only turns the protocol's format into named arrays of the datatypes the request
declares; whether they fit the model (names, rank, sizes, batch) is `inference.Model.check`'s
one contract, shared with every other front end.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from inference.errors import describe_problems
from inference.inputs import as_array, holds_booleans, shown
from inference.metadata import BundleMetadata, InputInfo
from serving.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from serving.protocol.classification import MISPLACED, PARAMETER, class_count, classify
from serving.protocol.schemas import InferenceRequest, RequestInput

HEADER_LENGTH = "inference-header-content-length"
HEADER_LENGTH_RAW = HEADER_LENGTH.encode()
RawHeaders = list[tuple[bytes, bytes]]
JSON_RAW_HEADERS: RawHeaders = [(b"content-type", b"application/json")]
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "BOOL": "?", "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "FP16": "f2", "FP32": "f4", "FP64": "f8", "BYTES": "O",
    }.items()
}  # fmt: skip
LENGTH = np.dtype("<u4")
"""The length prefix of each element of a binary BYTES tensor."""
JSON_TYPES = frozenset({"application/json", "application/octet-stream", ""})
JSON_KINDS = {
    name: "b"
    if name == "BOOL"
    else "iuf"
    if name.startswith("FP")
    else "U"
    if name == "BYTES"
    else "iu"
    for name in DTYPES
}
"""The numpy kinds that each datatype's JSON `data` may hold."""
FP32_MAX = float(np.finfo(np.float32).max)
SMALL = 16
"""Up to this many values, a range check in Python costs less than numpy's `errstate`."""
JSON_MEMORY_FACTOR = 32
"""Decoding a JSON body allocates at most this many times its size: a Python object per value
(and per nested list), orjson's own tree while it parses, then the arrays. Most forms take ~16x;
one value per list (`[[1], [2], ...]`) the most. `max_json_body_bytes` bounds the product;
tests/serving/test_body_memory.py holds every form to it."""


class Body(NamedTuple):
    header: bytes
    binary: bytes


@dataclass(slots=True)
class DecodedRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    """Requested output names, or None for the model's default outputs."""
    binary_flags: dict[str, bool]
    """Outputs whose request said `binary_data` explicitly; the others follow the default."""
    binary_default: bool
    classify: dict[str, int] | None
    """Outputs answered as their top classes (the classification extension), and how many;
    None for none (no default: filling one costs the plain request's call)."""


def split_body(raw: bytes, headers: Mapping[str, str], limit: int, json_limit: int) -> Body:
    """Check the content type, undo the content encoding, split JSON header and binary part.
    `limit` bounds the decompressed body, `json_limit` its JSON: JSON costs up to
    `JSON_MEMORY_FACTOR` times its size to decode, binary tensors about their size."""
    content_type = headers.get("content-type")
    if content_type != "application/json":  # the common case needs no parsing
        _check_content_type(content_type or "")
    length = headers.get(HEADER_LENGTH)
    encoding = headers.get("content-encoding")
    if encoding:
        json_only = length is None and json_limit < limit  # no need to inflate past it
        raw = _decompress(
            raw, encoding.strip().lower(), json_limit if json_only else limit, json_only
        )
    if length is None:
        if len(raw) > json_limit:
            raise json_too_large(f"{len(raw)} bytes", json_limit)
        return Body(raw, b"")
    try:
        n = int(length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {length!r}"
        ) from None
    if not 0 <= n <= len(raw):
        raise BadRequest(
            f"Inference-Header-Content-Length {n} is outside the body of {len(raw)} bytes"
        )
    if n > json_limit:
        raise json_too_large(f"{n} bytes", json_limit)
    return Body(raw[:n], raw[n:])


def json_too_large(size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the JSON body ({size}) exceeds max_json_body_bytes ({limit} bytes): decoding JSON "
        f"takes up to {JSON_MEMORY_FACTOR}x its size in memory. Send the tensors in binary "
        "(v2 infer with the binary tensor extension, tritonclient's default, or gRPC "
        "raw_input_contents), split the batch, or raise max_json_body_bytes"
    )


def _check_content_type(header: str) -> None:
    content_type = header.split(";", maxsplit=1)[0].strip().lower()
    if content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}: send application/json (with curl: "
            "-H 'Content-Type: application/json'), or binary tensors with an "
            "Inference-Header-Content-Length header"
        )


def _decompress(raw: bytes, encoding: str, limit: int, json_only: bool) -> bytes:
    """The inflated body; 413 past `limit` (`max_json_body_bytes` when `json_only`)."""
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"unsupported content encoding {encoding!r}; use gzip or deflate"
        )
    window = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(window)
    try:
        data = inflater.decompress(raw, limit + 1)  # stop early on a decompression bomb
    except zlib.error as e:
        raise BadRequest(f"the body is not valid {encoding} data: {e}") from e
    if len(data) > limit:
        if json_only:
            raise json_too_large(f"more than {limit} bytes decompressed", limit)
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"the body is not valid {encoding} data: it ends before its end mark")
    if inflater.unused_data:
        raise BadRequest(
            f"the body is not valid {encoding} data: {len(inflater.unused_data)} bytes follow "
            "its end"
        )
    return data


def parse_json(header: bytes) -> Any:
    """Parse JSON fast; on failure retry with the standard parser, which accepts NaN and
    Infinity so that the message can name the value instead of a column number."""
    if not header.strip():
        raise BadRequest("the request body is empty: expected a JSON object")
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequest("the request body is nested too deeply") from e


def mentions_booleans(body: Body) -> bool:
    """Whether the JSON may hold true or false anywhere. Searching the bytes costs next to
    nothing; searching the parsed lists for them costs as much as reading them into numpy."""
    return b"true" in body.header or b"false" in body.header


def decode_request(body: Body, metadata: BundleMetadata) -> DecodedRequest:
    document = parse_json(body.header)
    booleans = mentions_booleans(body)
    if len(metadata.inputs) == 1 and (body.binary or not booleans):  # true/false: JSON only
        plain = _plain_request(document, metadata.inputs[0], body.binary)
        if plain is not None:
            return plain
    return _validated_request(document, body.binary, metadata, may_hold_booleans=booleans)


def _validated_request(
    document: Any, binary: bytes, metadata: BundleMetadata, *, may_hold_booleans: bool = True
) -> DecodedRequest:
    """Any request, validated in full: every problem is named here."""
    if not isinstance(document, dict):
        raise BadRequest("the request body must be a JSON object with an 'inputs' list")
    try:
        request = InferenceRequest.model_validate(document)
    except ValidationError as e:
        raise BadRequest(f"invalid inference request: {describe_problems(e.errors())}") from e
    if request.id is not None and not _is_unicode(request.id):
        raise BadRequest("'id' is not valid Unicode text (it holds a lone surrogate escape)")
    parameters = request.parameters or {}
    if "classification" in parameters:
        raise BadRequest(MISPLACED)
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise BadRequest(f"'binary_data_output' must be true or false, got {binary_default!r}")
    inputs = _decode_inputs(request, binary, metadata, may_hold_booleans=may_hold_booleans)
    outputs, flags = _requested_outputs(request, metadata)
    return DecodedRequest(
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        binary_flags=flags,
        binary_default=binary_default,
        classify=_class_counts(request, metadata),
    )


def _is_unicode(text: str) -> bool:
    """False for a string with lone surrogates (which JSON's escapes allow), which no response
    could echo."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _plain_request(
    document: Any, signature: InputInfo, binary: bytes = b""
) -> DecodedRequest | None:
    """The common request (one tensor that fits the model, in JSON or as the whole binary
    part, no parameters, no outputs), checked by hand; None for anything else, which the full
    path then accepts or refuses with its message. Validating the envelope with pydantic costs
    a fifth of a small model's request. Everything accepted here, the full path accepts with
    the same result."""
    if type(document) is not dict or "parameters" in document or "outputs" in document:
        return None
    request_id = document.get("id")
    inputs = document.get("inputs")
    if request_id is not None and (type(request_id) is not str or not request_id.isascii()):
        return None
    if type(inputs) is not list:
        return None
    if len(inputs) != 1 or type(tensor := inputs[0]) is not dict or not _fits(tensor, signature):
        return None
    array = _plain_binary(tensor, binary) if binary else _plain_tensor(tensor)
    if array is None:
        return None
    return DecodedRequest(request_id, {signature.name: array}, None, {}, False, None)


def _fits(tensor: dict[str, Any], signature: InputInfo) -> bool:
    """Whether the tensor's name, datatype and shape are the model's input's."""
    shape = tensor.get("shape")
    return (
        tensor.get("name") == signature.name
        and tensor.get("datatype") == signature.datatype
        and type(shape) is list
        and len(shape) == len(signature.shape)
        and all(
            type(got) is int and got >= 0 and wanted in (-1, got)
            for got, wanted in zip(shape, signature.shape, strict=True)
        )
    )


def _plain_binary(tensor: dict[str, Any], binary: bytes) -> np.ndarray | None:
    """The tensor whose bytes are the whole binary part: `parameters` is only its size."""
    parameters, datatype, shape = tensor.get("parameters"), tensor["datatype"], tensor["shape"]
    if "data" in tensor or type(parameters) is not dict or len(parameters) != 1:
        return None
    dtype = DTYPES.get(datatype)
    count = math.prod(shape)
    size = parameters.get("binary_data_size")
    if (
        dtype is None
        or dtype.kind == "O"
        or type(size) is not int
        or not size == count * dtype.itemsize == len(binary)
    ):
        return None
    return np.frombuffer(binary, dtype=dtype, count=count).reshape(shape)


def _plain_tensor(tensor: dict[str, Any]) -> np.ndarray | None:
    """The tensor's JSON `data`, when it holds numbers of its datatype's kind, as many as its
    shape needs."""
    datatype, shape, data = tensor["datatype"], tensor["shape"], tensor.get("data")
    if "parameters" in tensor or datatype not in JSON_KINDS or type(data) is not list:
        return None
    if datatype == "BYTES":
        return None
    dtype = DTYPES[datatype]
    try:
        values = _json_array(data, dtype)
    except (ValueError, OutOfRange):
        return None
    if values.dtype.kind not in JSON_KINDS[datatype] or values.size != math.prod(shape):
        return None
    if values.ndim != 1 and values.shape != tuple(shape):
        return None
    return _cast(values.reshape(shape), dtype)


def _cast(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """`values` as `dtype`; a float too large for it becomes infinity, without a warning."""
    if values.dtype.kind != "f" or dtype.itemsize >= values.dtype.itemsize or not values.size:
        return values.astype(dtype, copy=False)  # nothing can overflow
    if values.size <= SMALL and dtype.itemsize == 4:
        flat = values.ravel().tolist()
        if max(flat) <= FP32_MAX and min(flat) >= -FP32_MAX:
            return values.astype(dtype, copy=False)
    with np.errstate(over="ignore"):  # too large becomes inf, refused as not finite
        return values.astype(dtype, copy=False)


def _decode_inputs(
    request: InferenceRequest, binary: bytes, metadata: BundleMetadata, *, may_hold_booleans: bool
) -> dict[str, np.ndarray]:
    expected = {i.name: i for i in metadata.inputs}
    names = [i.name for i in request.inputs]
    if sorted(names) != sorted(expected):
        wanted = ", ".join(f"{i.name!r} {i.datatype} {i.shape}" for i in metadata.inputs)
        raise BadRequest(f"inputs {names} do not match the model's inputs: {wanted}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        info = expected[tensor.name]
        if tensor.datatype != info.datatype:
            raise BadRequest(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's "
                f"{info.datatype}"
            )
        if "binary_data_size" in (tensor.parameters or {}):
            if tensor.data is not None:
                raise BadRequest(
                    f"input {tensor.name!r}: both 'data' and binary_data_size; send one of them"
                )
            array, offset = _from_binary(tensor, binary, offset)
        else:
            array = _from_json(tensor, may_hold_booleans=may_hold_booleans)
        arrays[tensor.name] = array
    if offset != len(binary):
        raise BadRequest(
            f"the binary part has {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    return arrays


def _from_json(tensor: RequestInput, *, may_hold_booleans: bool) -> np.ndarray:
    name, datatype, shape, data = tensor.name, tensor.datatype, tensor.shape, tensor.data
    if data is None:
        raise BadRequest(f"input {name!r}: 'data' is missing (and no binary_data_size is given)")
    kinds = JSON_KINDS[datatype]
    if datatype == "BYTES":
        return _bytes_from_json(name, shape, data)
    try:
        values = _json_array(data, DTYPES[datatype])
    except ValueError as e:  # ragged nesting
        raise BadRequest(f"input {name!r}: 'data' is not a regular array: {e}") from e
    except OutOfRange as e:
        raise BadRequest(f"input {name!r}: {e.value} is out of the range of {datatype}") from e
    if (wrong := _wrong_kind(data, values, kinds, may_hold_booleans)) is not None:
        raise BadRequest(f"input {name!r}: 'data' must hold {datatype} numbers, got {wrong}")
    count = math.prod(shape)
    if values.size != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values but 'data' has {values.size}"
        )
    _check_nesting(name, shape, values)
    return _cast(values.reshape(shape), DTYPES[datatype])


def _check_nesting(name: str, shape: list[int], values: np.ndarray) -> None:
    """JSON `data` is flat, or nested exactly as its shape (row-major): nested otherwise, the
    sender meant another shape."""
    if values.ndim != 1 and values.shape != tuple(shape):
        raise BadRequest(
            f"input {name!r}: 'data' is nested as {list(values.shape)} but the shape is "
            f"{shape}; send it flat or nested as the shape"
        )


def _bytes_from_json(name: str, shape: list[int], data: Any) -> np.ndarray:
    """A BYTES tensor's JSON `data`: strings, nested or flat, as many as the shape needs."""
    values = np.asarray(data if isinstance(data, list) else [data], dtype=object)
    if not all(type(v) is str for v in values.flat):
        raise BadRequest(f"input {name!r}: 'data' must hold BYTES as strings")
    count = math.prod(shape)
    if values.size != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values but 'data' has {values.size}"
        )
    _check_nesting(name, shape, values)
    return values.reshape(shape)


def _wrong_kind(
    data: list[Any], values: np.ndarray, kinds: str, may_hold_booleans: bool
) -> str | None:
    """What JSON data holds that its datatype does not take, in the error message's words."""
    if not values.size:
        return None
    if values.dtype.kind == "O" and "O" not in kinds:
        return _describe_objects(values)
    if values.dtype.kind not in kinds:
        kind = {"U": "strings", "b": "booleans", "f": "fractions"}
        return kind.get(values.dtype.kind, values.dtype.name)
    if values.dtype.kind != "b" and may_hold_booleans and holds_booleans(data):
        return "true/false among them"
    return None


def _describe_objects(values: np.ndarray) -> str:
    """What an array of JSON values holds besides numbers (text makes such an array: see
    `as_array`), quoting at most a few characters of it."""
    odd = next((v for v in values.flat if type(v) not in (int, float)), values)
    if odd is values:
        return "integers too large for any numeric type"
    if type(odd) is str:
        return f"strings such as {shown(odd)}"
    if odd is None:
        return "mixed values or null"
    return f"mixed values such as {_JSON_NAMES.get(type(odd), 'a value')} {shown(odd)}"


_JSON_NAMES = {bool: "boolean", dict: "object", list: "list"}


class OutOfRange(Exception):
    """An integer that the tensor's integer datatype cannot hold."""

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value


def _json_array(data: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    """JSON `data` as numpy reads it, but integers for an integer datatype are checked against
    its range (a cast would wrap them round: 256 → 0 in UINT8) and read exactly (numpy alone
    reads `[1, 2**64 - 1]` as float64). Text makes objects (`as_array`), never numpy's
    fixed-width strings."""
    values = as_array(data)
    if dtype.kind not in "iu" or not values.size or np.can_cast(values.dtype, dtype):
        return values
    info = np.iinfo(dtype)
    if values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise OutOfRange(low if low < info.min else high)
        return values
    objects = np.asarray(data, dtype=object)
    if values.dtype.kind not in "fO" or any(type(v) is not int for v in objects.flat):
        return values  # fractions or other values: refused by kind
    outside = next((v for v in objects.flat if not info.min <= v <= info.max), None)
    if outside is not None:
        raise OutOfRange(outside)
    return objects.astype(dtype)


def _from_binary(tensor: RequestInput, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
    size = (tensor.parameters or {})["binary_data_size"]
    dtype = DTYPES[datatype]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
    expected = math.prod(shape) * dtype.itemsize
    if datatype != "BYTES" and size != expected:
        raise BadRequest(
            f"input {name!r}: binary_data_size {size} does not fit shape {shape} of {datatype} "
            f"({expected} bytes)"
        )
    if offset + size > len(binary):
        raise BadRequest(
            f"input {name!r}: binary_data_size {size} runs past the end of the binary part "
            f"({len(binary) - offset} bytes left)"
        )
    if datatype == "BYTES":
        return _bytes_from_binary(name, shape, binary[offset : offset + size]), offset + size
    array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
    return array.reshape(shape), offset + size


def _bytes_from_binary(name: str, shape: list[int], blob: bytes) -> np.ndarray:
    """Elements of a binary BYTES tensor: each a 4-byte little-endian length, then its bytes
    (UTF-8 text: ONNX strings are text)."""
    count = math.prod(shape)
    values: list[str] = []
    at = 0
    while at < len(blob) and len(values) < count:
        if at + 4 > len(blob):
            break
        length = int(np.frombuffer(blob, LENGTH, 1, at)[0])
        if at + 4 + length > len(blob):
            break
        try:
            values.append(blob[at + 4 : at + 4 + length].decode())
        except UnicodeDecodeError as e:
            raise BadRequest(f"input {name!r}: element {len(values)} is not UTF-8 text") from e
        at += 4 + length
    if len(values) != count or at != len(blob):
        raise BadRequest(
            f"input {name!r}: the binary part does not hold {count} length-prefixed BYTES "
            "elements (each a 4-byte little-endian length, then its bytes)"
        )
    return np.array(values, dtype=object).reshape(shape)


def _bytes_to_binary(array: np.ndarray) -> bytes:
    parts = []
    for value in array.ravel().tolist():
        data = value if isinstance(value, bytes) else str(value).encode()
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def _requested_outputs(
    request: InferenceRequest, metadata: BundleMetadata
) -> tuple[list[str] | None, dict[str, bool]]:
    if request.outputs is None:
        return None, {}
    known = [o.name for o in metadata.outputs]
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; the model has: {', '.join(known)}")
    flags = {
        o.name: o.parameters["binary_data"]
        for o in request.outputs
        if o.parameters and "binary_data" in o.parameters
    }
    for name, flag in flags.items():
        if type(flag) is not bool:
            raise BadRequest(f"output {name!r}: 'binary_data' must be true or false, got {flag!r}")
    return names, {name: flag is True for name, flag in flags.items()}


def _class_counts(request: InferenceRequest, metadata: BundleMetadata) -> dict[str, int] | None:
    """The outputs requested with the classification extension's parameter (None: none)."""
    counts = {
        o.name: class_count(o.name, o.parameters[PARAMETER], metadata)
        for o in request.outputs or ()
        if o.parameters and PARAMETER in o.parameters
    }
    return counts or None


def encode_response(
    outputs: dict[str, np.ndarray],
    metadata: BundleMetadata,
    request: DecodedRequest,
    model_name: str | None = None,
) -> tuple[bytes, RawHeaders]:
    """The response body and its headers (content type; header length when binary);
    `model_name` is the name the client called the model by (default: the bundle's)."""
    datatypes = {o.name: o.datatype for o in metadata.outputs}
    if request.classify:
        outputs = classify(outputs, request.classify, metadata)
        datatypes.update(dict.fromkeys(request.classify, "BYTES"))
    described, blobs = [], []
    flags, default = request.binary_flags, request.binary_default
    for name, array in outputs.items():
        datatype = datatypes[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if flags.get(name, default):
            blob = (
                _bytes_to_binary(array)
                if datatype == "BYTES"
                else np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            tensor["data"] = [v if isinstance(v, str) else v.decode() for v in array.ravel()]
        else:
            flat = array.ndim == 1 and array.flags.c_contiguous
            tensor["data"] = array if flat else array.ravel()
        described.append(tensor)
    document = {
        "model_name": metadata.name if model_name is None else model_name,
        "model_version": str(metadata.version),
        "outputs": described,
    }
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, JSON_RAW_HEADERS
    headers = [
        (b"content-type", b"application/octet-stream"),
        (HEADER_LENGTH_RAW, b"%d" % len(header)),
    ]
    return header + b"".join(blobs), headers


class EncodedResponse(Response):
    """Encoded bytes and their headers, as a Starlette response without its generic header
    handling: building a `Response` cost ~5 µs of a ~75 µs hot request, more than the JSON."""

    def __init__(self, body: bytes, headers: RawHeaders = JSON_RAW_HEADERS):
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), *headers]
