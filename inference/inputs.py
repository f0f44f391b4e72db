"""Turn what a user sends into the exact float32 matrix the graph takes, or say what is wrong.

In-process callers and the HTTP service go through here, so a value refused in one is refused
in the other with the same words. The Spark job applies the same rules to Arrow columns, one
message per bad row instead of one error per batch, in `batch/convert.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inference.errors import InvalidInputError
from inference.metadata import InputInfo

FLOAT = np.float32
SCAN_MAX = 64
"""Up to this many values, looking at each in Python costs less than a numpy pass."""
NESTED = (list, tuple)


def as_feature_matrix(
    data: Any, signature: InputInfo, *, check: bool = True, may_hold_booleans: bool = True
) -> np.ndarray:
    """A (rows, features) float32 array from an array-like, checked against the signature;
    `check=False` leaves the row check (`check_rows`) to a caller that runs it anyway, and
    `may_hold_booleans=False` the search for true/false among numbers to one that knows there
    are none (a JSON body without the words `true` and `false`)."""
    try:
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
    except (ValueError, TypeError) as e:  # ragged rows
        raise InvalidInputError(f"features must be a regular 2-D batch of numbers: {e}") from e
    if array.size and array.dtype.kind not in "iuf":
        raise InvalidInputError(f"features must be numbers, got {_describe(array)}")
    if may_hold_booleans and array is not data and array.size and holds_booleans(data):
        raise InvalidInputError("features must be numbers, got true/false among them")
    matrix = array.astype(FLOAT, copy=False)
    n_features = len(signature.feature_names)
    if matrix.ndim != 2 or matrix.shape[1] != n_features:
        raise InvalidInputError(
            f"expected a 2-D batch of shape [rows, {n_features}] "
            f"({', '.join(signature.feature_names)}), got shape {list(matrix.shape)}"
        )
    if check:
        check_rows(matrix, signature)
    return matrix


def from_columns(columns: Mapping[str, Any], signature: InputInfo) -> np.ndarray:
    """A feature matrix from named columns; names must match the signature exactly."""
    expected = signature.feature_names
    missing = [name for name in expected if name not in columns]
    unknown = [name for name in columns if name not in expected]
    if missing or unknown:
        raise InvalidInputError(_name_mismatch(missing, unknown, expected))
    arrays = {name: np.asarray(columns[name]) for name in expected}
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
    expected = signature.feature_names
    rows = []
    for i, record in enumerate(records):
        missing = [name for name in expected if name not in record]
        unknown = [name for name in record if name not in expected]
        if missing or unknown:
            raise InvalidInputError(f"row {i}: {_name_mismatch(missing, unknown, expected)}")
        rows.append([record[name] for name in expected])
    return as_feature_matrix(rows, signature, check=check, may_hold_booleans=may_hold_booleans)


def holds_booleans(data: Any) -> bool:
    """Whether nested lists hold true or false: numpy reads `[true, 2.5]` as `[1.0, 2.5]`
    without a trace, so the lists themselves are looked at."""
    if type(data) not in NESTED:
        return type(data) is bool
    lists = [data]
    while lists:
        kinds = set(map(type, items := lists.pop()))
        if bool in kinds:
            return True
        if not kinds.isdisjoint(NESTED):
            lists.extend(item for item in items if type(item) in NESTED)
    return False


def check_rows(matrix: np.ndarray, signature: InputInfo) -> None:
    """Refuse an empty batch, and NaN or infinity unless the model accepts them."""
    if matrix.shape[0] == 0:
        raise InvalidInputError("the batch is empty: send at least one row")
    if signature.accepts_non_finite or math.isfinite(_total(matrix)):
        return  # one pass: NaN and infinity propagate to a float64 sum, which cannot overflow
    bad = invalid_rows(matrix)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(matrix[row]))[0])
        raise InvalidInputError(
            f"row {row}, feature {signature.feature_names[col]!r}: {matrix[row, col]} is missing "
            f"or not a finite number ({int(bad.sum())} such row(s)); this model does not accept "
            "null, NaN or infinity"
        )


def _total(matrix: np.ndarray) -> float:
    """The sum of all values in float64; a few values are summed in Python, where numpy's call
    costs more than the sum (a request of one row is the common case)."""
    if matrix.size <= SCAN_MAX:
        return float(sum(matrix.ravel().tolist()))
    return float(np.add.reduce(matrix, axis=None, dtype=np.float64))


def invalid_rows(matrix: np.ndarray) -> np.ndarray:
    """A boolean mask of rows holding NaN or infinity (for per-row error reporting)."""
    result: np.ndarray = ~np.isfinite(matrix).all(axis=1)
    return result


def _describe(array: np.ndarray) -> str:
    """What a non-numeric array holds, for the error message."""
    if array.dtype.kind in "US":
        texts = [str(v) for v in array.flat]
        odd = next((t for t in texts if not _is_number(t)), None)
        return f"text such as {odd!r}" if odd else f"quoted numbers such as {texts[0]!r}"
    if array.dtype.kind == "b":
        return "true/false values"
    if array.dtype.kind == "O":
        odd = next((v for v in array.flat if not isinstance(v, int | float)), None)
        return "null (a missing value)" if odd is None else f"{type(odd).__name__} {odd!r}"
    return f"values of type {array.dtype}"


def _is_number(text: str) -> bool:
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
