"""Turn what a user sends into the exact arrays the graph takes, or say what is wrong.

The contract is named tensors (`as_tensors`): a dict of input name → array of any rank, checked
against the signature (names, rank, fixed dimensions, datatype, equal batch sizes, an empty
batch, NaN and infinity). Conversion is lossless for integers, booleans and text (an integer out
of its type's range, a fraction for an integer input, a boolean for a number are refused);
numbers become the input's float type (a value too large for it is refused as infinite). A
tabular input (`[rows, features]` with feature names) also takes rows, records and named
columns (`as_feature_matrix`, `from_records`, `from_columns`), and its messages name features.

In-process callers and the HTTP service go through here, so a value refused in one is refused
in the other with the same words. The Spark job applies the same rules to Arrow columns, one
message per bad row instead of one error per batch, in `batch/convert.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from inference.errors import InvalidInputError
from inference.metadata import Datatype, InputInfo

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?", "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "FP16": "f2", "FP32": "f4", "FP64": "f8", "BYTES": "O",
    }.items()
}  # fmt: skip
"""The numpy type onnxruntime takes for each datatype (BYTES: an object array of str)."""
FLOAT = np.float32
_MISSING = object()
SCAN_MAX = 64
"""Up to this many values, looking at each in Python costs less than a numpy pass."""
NESTED = (list, tuple)
NESTED_TYPES = frozenset(NESTED)
TEXT = frozenset({str, bytes})
BOOLEAN = frozenset({bool})
SHOWN = 40
"""At most this many characters of a value are quoted in a message (and so in the log)."""


def as_feature_matrix(
    data: Any, signature: InputInfo, *, check: bool = True, may_hold_booleans: bool = True
) -> np.ndarray:
    """A (rows, features) float32 array from an array-like, checked against the signature;
    `check=False` leaves the row check (`check_rows`) to a caller that runs it anyway, and
    `may_hold_booleans=False` the search for true/false among numbers to one that knows there
    are none (a JSON body without the words `true` and `false`)."""
    try:
        array = data if isinstance(data, np.ndarray) else as_array(data)
    except (ValueError, TypeError) as e:  # ragged rows
        raise InvalidInputError(f"features must be a regular 2-D batch of numbers: {e}") from e
    if array.size and array.dtype.kind not in "iuf":
        raise InvalidInputError(f"features must be numbers, got {_describe(array)}")
    if may_hold_booleans and array is not data and array.size and holds_booleans(data):
        raise InvalidInputError("features must be numbers, got true/false among them")
    matrix = array.astype(FLOAT, copy=False)
    names = feature_names(signature)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        if matrix.shape[:1] == (0,):  # `[]`: nothing to predict (an empty [0, n] fails later)
            raise InvalidInputError("the batch is empty: send at least one row")
        raise InvalidInputError(
            f"expected a 2-D batch of shape [rows, {len(names)}] "
            f"({', '.join(names)}), got shape {list(matrix.shape)}"
        )
    if check:
        check_rows(matrix, signature)
    return matrix


def feature_names(signature: InputInfo) -> list[str]:
    """A tabular input's feature names; a message for any other input."""
    if signature.feature_names is None:
        raise InvalidInputError(
            f"input {signature.name!r} has no feature names: send it as an array of shape "
            f"{signature.shape} (-1: any size)"
        )
    return signature.feature_names


def from_columns(columns: Mapping[str, Any], signature: InputInfo) -> np.ndarray:
    """A feature matrix from named columns; names must match the signature exactly."""
    expected = feature_names(signature)
    missing = [name for name in expected if name not in columns]
    unknown = [name for name in columns if name not in expected]
    if missing or unknown:
        raise InvalidInputError(_name_mismatch(missing, unknown, expected))
    try:
        arrays = {name: as_array(columns[name]) for name in expected}
    except ValueError as e:
        raise InvalidInputError(f"feature columns must be 1-D lists of numbers: {e}") from e
    lengths = {name: array.shape for name, array in arrays.items()}
    if len(set(lengths.values())) != 1 or len(lengths[expected[0]]) != 1:
        raise InvalidInputError(
            f"feature columns must be 1-D and of equal length; got shapes {lengths}"
        )
    for name, array in arrays.items():
        if array.dtype.kind == "b" or holds_booleans(columns[name]):
            raise InvalidInputError(f"feature {name!r} must be numbers, got true/false values")
    return as_feature_matrix(np.column_stack(list(arrays.values())), signature)


def from_records(
    records: Sequence[Mapping[str, Any]],
    signature: InputInfo,
    *,
    check: bool = True,
    may_hold_booleans: bool = True,
) -> np.ndarray:
    """A feature matrix from one mapping of feature name → value per row."""
    expected = feature_names(signature)
    rows = []
    for i, record in enumerate(records):
        missing = [name for name in expected if name not in record]
        unknown = [name for name in record if name not in expected]
        if missing or unknown:
            raise InvalidInputError(f"row {i}: {_name_mismatch(missing, unknown, expected)}")
        rows.append([record[name] for name in expected])
    return as_feature_matrix(rows, signature, check=check, may_hold_booleans=may_hold_booleans)


def as_array(data: Any) -> np.ndarray:
    """`np.asarray` of nested lists, except that text makes an array of objects. numpy gives
    every element of a text array the width of the longest one: one 1 MB string among 500
    numbers asks for 2 GB, from a body of 1 MB. Objects cost a pointer each, so no request
    allocates more than a small multiple of its size; a BYTES input takes them as they are,
    and any other input refuses them by their type. Every conversion of nested lists (v1,
    v2 JSON, in-process) comes through here. ValueError for ragged nesting, as numpy's."""
    if type(data) not in NESTED or not _holds(data, TEXT):
        return np.asarray(data)
    array = np.array(data, dtype=object)
    if any(type(value) in NESTED for value in array.flat):  # numpy keeps ragged rows as lists
        raise ValueError("the nested lists are ragged (rows of different lengths or depths)")
    return array


def holds_booleans(data: Any) -> bool:
    """Whether nested lists hold true or false: numpy reads `[true, 2.5]` as `[1.0, 2.5]`
    without a trace, so the lists themselves are looked at."""
    return _holds(data, BOOLEAN)


def _holds(data: Any, wanted: frozenset[type]) -> bool:
    """Whether nested lists hold a value of one of the `wanted` types: one level at a time,
    each read by C loops (a row of a request costs two set builds, no Python loop)."""
    if type(data) not in NESTED:
        return type(data) in wanted
    level = data
    while level:
        if len(level) <= SCAN_MAX:  # a few values (a request of one row): a loop costs less
            inner: list[Any] = []
            for item in level:
                if type(item) in wanted:
                    return True
                if type(item) in NESTED:
                    inner.extend(item)
            level = inner
            continue
        kinds = set(map(type, level))
        if not kinds.isdisjoint(wanted):
            return True
        if kinds.isdisjoint(NESTED):
            return False
        if not kinds <= NESTED_TYPES:
            level = [item for item in level if type(item) in NESTED]
        level = list(chain.from_iterable(level))
    return False


def check_rows(matrix: np.ndarray, signature: InputInfo) -> None:
    """Refuse an empty batch, and NaN or infinity unless the model accepts them."""
    if matrix.shape[0] == 0:
        raise InvalidInputError("the batch is empty: send at least one row")
    if signature.accepts_non_finite or math.isfinite(total(matrix)):
        return  # one pass: NaN and infinity propagate to a float64 sum, which cannot overflow
    bad = invalid_rows(matrix)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(matrix[row]))[0])
        raise InvalidInputError(
            f"row {row}, feature {feature_names(signature)[col]!r}: {matrix[row, col]} is missing "
            f"or not a finite number ({int(bad.sum())} such row(s)); this model does not accept "
            "null, NaN or infinity"
        )


def total(matrix: np.ndarray) -> float:
    """The sum of all values in float64; a few values are summed in Python, where numpy's call
    costs more than the sum (a request of one row is the common case)."""
    if matrix.size <= SCAN_MAX:
        return float(sum(matrix.ravel().tolist()))
    return float(np.add.reduce(matrix, axis=None, dtype=np.float64))


def non_finite_row(array: np.ndarray) -> int | None:
    """The first row (along the first axis) of a float array holding NaN or infinity; None
    when there is none or the array is not of floats. One sum in the common case."""
    if array.dtype.kind != "f" or not array.size or math.isfinite(total(array)):
        return None
    bad = invalid_rows(array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1))
    return int(np.flatnonzero(bad)[0]) if bad.any() else None  # a finite sum overflowed


def invalid_rows(matrix: np.ndarray) -> np.ndarray:
    """A boolean mask of rows holding NaN or infinity (for per-row error reporting)."""
    result: np.ndarray = ~np.isfinite(matrix).all(axis=1)
    return result


def _describe(array: np.ndarray) -> str:
    """What a non-numeric array holds, for the error message."""
    if array.dtype.kind in "US" or (array.dtype.kind == "O" and _all_text(array)):
        texts = (str(v) for v in array.flat)
        first = odd = None
        for text in texts:
            first = text if first is None else first
            if not is_number(text):
                odd = text
                break
        return f"text such as {shown(odd)}" if odd else f"quoted numbers such as {shown(first)}"
    if array.dtype.kind == "b":
        return "true/false values"
    if array.dtype.kind == "O":
        odd = next((v for v in array.flat if not isinstance(v, int | float)), None)
        if odd is None:
            return "null (a missing value)"
        return f"{'text such as' if type(odd) in TEXT else type(odd).__name__} {shown(odd)}"
    return f"values of type {array.dtype}"


def _all_text(array: np.ndarray) -> bool:
    return all(type(v) in TEXT for v in array.flat)


def shown(value: Any) -> str:
    """A value's repr for a message, cut to `SHOWN` characters: a message (and the log line
    that records it) never grows with what a client sent."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 1]}…"


def is_number(text: str) -> bool:
    """Whether text reads as a number (a quoted number in a request or a spec)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _name_mismatch(missing: list[str], unknown: list[str], expected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing feature(s) {', '.join(map(repr, missing))}")
    if unknown:
        parts.append(f"unknown feature(s) {', '.join(map(repr, unknown))}")
    return f"{' and '.join(parts)}; this model expects: {', '.join(expected)}"


def as_tensors(data: Mapping[str, Any], signature: Sequence[InputInfo]) -> dict[str, np.ndarray]:
    """The named arrays the graph takes, each converted and checked against its input; the
    batch must be non-empty and of one size across the inputs with a batch axis."""
    return Checker(signature)(data)


class Checker:
    """`as_tensors` for one signature, prepared once (a model keeps one): every request runs
    it, and for the common request (arrays already of the right type and shape) it costs a
    few attribute reads per input. Then: no empty batch, one batch size across the inputs
    with a batch axis, and no NaN or infinity in a float input that does not accept them."""

    def __init__(self, signature: Sequence[InputInfo]):
        self.signature = list(signature)
        self._inputs = [
            (
                info,
                NUMPY_TYPES[info.datatype],
                info.shape,
                info.batch_axis,
                info.datatype in FLOATS and not info.accepts_non_finite,
            )
            for info in self.signature
        ]
        self._one = _one_input(self.signature)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        one = self._one
        if one is not None and len(data) == 1:  # the hot path: one array that fits as it is
            name, dtype, rank, inner, info, finite = one
            value = data.get(name)
            if type(value) is np.ndarray and (value.dtype is dtype or value.dtype == dtype):
                shape = value.shape
                if len(shape) == rank and shape[1:] == inner and shape[0]:
                    if finite is not None:
                        finite(value, info)
                    return {name: value}
        return self._general(data)

    def _general(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if len(data) != len(self._inputs):
            raise InvalidInputError(_inputs_mismatch(data, self.signature))
        feeds = {}
        size = None
        for info, dtype, shape, batch, _ in self._inputs:
            value = data.get(info.name, _MISSING)
            if value is _MISSING:
                raise InvalidInputError(_inputs_mismatch(data, self.signature))
            if type(value) is not np.ndarray or value.dtype != dtype or not _fits(value, shape):
                value = as_tensor(value, info)
            feeds[info.name] = value
            if not batch:
                continue
            if size is None:
                size = value.shape[0]
            elif value.shape[0] != size:
                raise InvalidInputError(_sizes_differ(feeds, self.signature))
        if size == 0:
            raise InvalidInputError("the batch is empty: send at least one row")
        for info, _, _, _, finite in self._inputs:
            if finite:
                _check_finite(feeds[info.name], info)
        return feeds


def _one_input(signature: list[InputInfo]) -> tuple[Any, ...] | None:
    """What the hot path needs for a model of one batched input with fixed inner dimensions
    (every tabular model): its name, numpy type, rank, inner shape, and its NaN check."""
    if len(signature) != 1 or not signature[0].batch_axis or -1 in signature[0].shape[1:]:
        return None
    info = signature[0]
    finite = None
    if info.datatype in FLOATS and not info.accepts_non_finite:
        finite = check_rows if info.feature_names is not None else _check_finite
    dtype = NUMPY_TYPES[info.datatype]
    return info.name, dtype, len(info.shape), tuple(info.shape[1:]), info, finite


def _fits(array: np.ndarray, wanted: list[int]) -> bool:
    shape = array.shape
    if len(shape) != len(wanted):
        return False
    for got, want in zip(shape, wanted, strict=True):  # noqa: SIM110 (a loop: quicker than all())
        if want not in (got, -1):
            return False
    return True


def as_tensor(value: Any, info: InputInfo) -> np.ndarray:
    """One input's array: its datatype (converted where no value changes meaning) and a shape
    of the input's rank with its fixed dimensions."""
    array = _converted(value, info)
    if not _fits(array, info.shape):
        raise InvalidInputError(
            f"input {info.name!r}: expected shape {info.shape} (-1: any size), "
            f"got {list(array.shape)}"
        )
    return array


def _check_finite(array: np.ndarray, info: InputInfo) -> None:
    if info.feature_names is not None:
        check_rows(array, info)
    elif not math.isfinite(total(array)):
        rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        bad = invalid_rows(rows)
        raise InvalidInputError(
            f"input {info.name!r}: NaN or infinity in row {int(np.flatnonzero(bad)[0])} "
            f"({int(bad.sum())} such row(s)); this model does not accept them"
        )


def _sizes_differ(feeds: Mapping[str, np.ndarray], signature: Sequence[InputInfo]) -> str:
    listed = ", ".join(
        f"{i.name!r} {feeds[i.name].shape[0]}"
        for i in signature
        if i.batch_axis and i.name in feeds
    )
    return f"the inputs have different batch sizes ({listed}); send one row of each per example"


FLOATS = frozenset({"FP16", "FP32", "FP64"})


def _converted(value: Any, info: InputInfo) -> np.ndarray:
    """`value` as the input's numpy type, or a message saying what it holds instead."""
    dtype = NUMPY_TYPES[info.datatype]
    typed = isinstance(value, np.ndarray)
    if typed and value.dtype == dtype:
        same: np.ndarray = value
        return same
    try:
        array = value if typed else as_array(value)
    except (ValueError, TypeError) as e:  # ragged nesting
        raise InvalidInputError(f"input {info.name!r}: not a regular array: {e}") from e
    wrong = _wrong_values(array, info.datatype)
    if wrong is None and not typed and array.dtype.kind in "iuf" and holds_booleans(value):
        wrong = "true/false among numbers"
    if wrong is not None:
        raise InvalidInputError(f"input {info.name!r}: expected {info.datatype}, got {wrong}")
    if info.datatype == "BYTES":
        return array.astype(object)
    with np.errstate(over="ignore"):  # too large for the float type: infinity, refused later
        converted: np.ndarray = array.astype(dtype)
    return converted


def _wrong_values(array: np.ndarray, datatype: Datatype) -> str | None:
    """What the array holds that the datatype cannot take without changing a value."""
    kind = array.dtype.kind
    if not array.size:
        return None
    if datatype == "BYTES":
        text = kind in "US" or (kind == "O" and all(isinstance(v, str | bytes) for v in array.flat))
        return None if text else "values that are not text"
    if datatype == "BOOL":
        return None if kind == "b" else f"{_describe(array)} (send true/false)"
    if kind not in "iu" or datatype in FLOATS:
        return None if kind in "iuf" and datatype in FLOATS else _describe_kind(array)
    return _out_of_range(array, datatype)


def _out_of_range(array: np.ndarray, datatype: Datatype) -> str | None:
    """The first integer outside the integer datatype's range, described."""
    limits = np.iinfo(NUMPY_TYPES[datatype])
    low, high = int(array.min()), int(array.max())
    if low < limits.min or high > limits.max:
        return f"{low if low < limits.min else high}, out of its range"
    return None


def _describe_kind(array: np.ndarray) -> str:
    return "fractions" if array.dtype.kind == "f" else _describe(array)


def _inputs_mismatch(data: Mapping[str, Any], signature: Sequence[InputInfo]) -> str:
    expected = [i.name for i in signature]
    missing = [n for n in expected if n not in data]
    unknown = [n for n in data if n not in expected]
    parts = [f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []
    if unknown:
        parts.append(f"unknown input(s) {', '.join(map(repr, map(str, unknown)))}")
    wanted = ", ".join(f"{i.name!r} {i.datatype} {i.shape}" for i in signature)
    return f"{' and '.join(parts)}; this model takes: {wanted}"
