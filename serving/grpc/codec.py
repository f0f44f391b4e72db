"""Open Inference Protocol gRPC tensors ↔ numpy: `ModelInferRequest` in, `ModelInferResponse` out.

An input's values come either typed, in its `contents` (`fp32_contents`, `int64_contents`, ...),
or raw, as its entry of `raw_input_contents` (little-endian bytes in row-major order; a BYTES
element is a 4-byte little-endian length and then its bytes), which is tritonclient's default.
A request is all raw or all typed, as the spec says. The answer follows the request: raw outputs
for a raw request, typed `contents` for a typed one (raw too where no typed field holds the
datatype: FP16). As in the HTTP codec, this module only turns the format into named arrays of
the declared datatypes; whether they fit the model is `inference.Model.check`'s one contract.
The messages for the mistakes both protocols share are the HTTP codec's, word for word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.metadata import BundleMetadata
from serving.core.errors import BadRequest
from serving.protocol.classification import MISPLACED, PARAMETER, class_count, classify
from serving.protocol.codec import DTYPES, LENGTH

CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip
"""The typed field of `InferTensorContents` that holds each datatype (none holds FP16)."""
FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_), "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64), "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}  # fmt: skip
"""Each typed field's own width: values are read at it, then checked and narrowed."""


@dataclass(slots=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    """Requested output names, or None for the model's default outputs (as over HTTP)."""
    raw: bool
    """Whether the request sent raw contents (and so gets raw outputs)."""
    classify: dict[str, int] | None = None
    """Outputs answered as their top classes (the classification extension), and how many."""


def decode_request(request: Any, metadata: BundleMetadata) -> DecodedRequest:
    """A `ModelInferRequest` as named arrays, with its requested outputs."""
    if "classification" in request.parameters:
        raise BadRequest(MISPLACED)
    _check_names([t.name for t in request.inputs], metadata)
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "send every input raw (one entry each, in input order) or every input typed"
        )
    datatypes = {i.name: i.datatype for i in metadata.inputs}
    arrays = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype != datatypes[tensor.name]:
            raise BadRequest(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's "
                f"{datatypes[tensor.name]}"
            )
        shape = list(tensor.shape)
        if any(size < 0 for size in shape):
            raise BadRequest(f"input {tensor.name!r}: shape {shape} has a negative dimension")
        if raw:
            arrays[tensor.name] = _from_raw(tensor.name, tensor.datatype, shape, raw[index])
        else:
            arrays[tensor.name] = _from_contents(tensor, shape)
    outputs = _requested_outputs(request, metadata)
    return DecodedRequest(arrays, outputs, bool(raw), _class_counts(request, metadata))


def _check_names(names: list[str], metadata: BundleMetadata) -> None:
    if sorted(names) != sorted(i.name for i in metadata.inputs):
        wanted = ", ".join(f"{i.name!r} {i.datatype} {i.shape}" for i in metadata.inputs)
        raise BadRequest(f"inputs {names} do not match the model's inputs: {wanted}")


def _from_raw(name: str, datatype: str, shape: list[int], blob: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, blob)
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise BadRequest(
            f"input {name!r}: raw_input_contents holds {len(blob)} bytes but shape {shape} of "
            f"{datatype} needs {expected}"
        )
    return np.frombuffer(blob, dtype=dtype, count=count).reshape(shape)


def _bytes_from_raw(name: str, shape: list[int], blob: bytes) -> np.ndarray:
    """Each element a 4-byte little-endian length, then its bytes (UTF-8: ONNX strings are
    text)."""
    count, at = math.prod(shape), 0
    values: list[str] = []
    while len(values) < count and at + 4 <= len(blob):
        end = at + 4 + int(np.frombuffer(blob, LENGTH, 1, at)[0])
        if end > len(blob):
            break
        values.append(_text(name, len(values), blob[at + 4 : end]))
        at = end
    if len(values) != count or at != len(blob):
        raise BadRequest(
            f"input {name!r}: raw_input_contents does not hold {count} length-prefixed BYTES "
            "elements (each a 4-byte little-endian length, then its bytes)"
        )
    return np.array(values, dtype=object).reshape(shape)


def _text(name: str, index: int, value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise BadRequest(f"input {name!r}: element {index} is not UTF-8 text") from e


def _from_contents(tensor: Any, shape: list[int]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} has no typed contents; send it raw")
    values = getattr(tensor.contents, field)  # protobuf's repeated field, not copied to a list
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values but {field} has {len(values)}"
        )
    if datatype == "BYTES":
        texts = [_text(name, i, v) for i, v in enumerate(values)]
        return np.array(texts, dtype=object).reshape(shape)
    dtype = DTYPES[datatype]
    wide = np.fromiter(values, FIELD_DTYPES[field], count=count)  # the field's own width
    if dtype.kind in "iu" and count and wide.dtype != dtype:
        info = np.iinfo(dtype)  # int_contents is 32 bits wide: an INT8 could wrap round
        outside = next((v for v in (wide.min(), wide.max()) if not info.min <= v <= info.max), None)
        if outside is not None:
            raise BadRequest(f"input {name!r}: {outside} is out of the range of {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def _requested_outputs(request: Any, metadata: BundleMetadata) -> list[str] | None:
    if not request.outputs:
        return None
    known = [o.name for o in metadata.outputs]
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; the model has: {', '.join(known)}")
    return names


def _class_counts(request: Any, metadata: BundleMetadata) -> dict[str, int] | None:
    """The outputs requested with the classification extension's parameter (None: none)."""
    counts = {}
    for output in request.outputs:
        if PARAMETER in output.parameters:
            parameter = output.parameters[PARAMETER]
            kind = parameter.WhichOneof("parameter_choice")
            value = getattr(parameter, kind) if kind else None
            counts[output.name] = class_count(output.name, value, metadata)
    return counts or None


def encode_response(
    response: Any,
    outputs: dict[str, np.ndarray],
    metadata: BundleMetadata,
    decoded: DecodedRequest,
) -> Any:
    """Fill `response` (a `ModelInferResponse` with its name, version and id set)."""
    datatypes = {o.name: o.datatype for o in metadata.outputs}
    if decoded.classify:
        outputs = classify(outputs, decoded.classify, metadata)
        datatypes.update(dict.fromkeys(decoded.classify, "BYTES"))
    raw = decoded.raw or any(CONTENTS.get(datatypes[n]) is None for n in outputs)
    for name, array in outputs.items():
        datatype = datatypes[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(_to_raw(array, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(_utf8(v) for v in array.ravel().tolist())
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return response


def _to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
    parts = []
    for value in array.ravel().tolist():
        data = _utf8(value)
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def _utf8(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
