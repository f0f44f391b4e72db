"""Arrow columns → the float32 feature matrix, with a reason for every row that cannot be scored.

Runs inside Spark's Python workers, on one Arrow batch at a time, vectorised: the per-row
Python work happens only for rows that are bad (to write their message). A row is bad when a
feature is null, text that is not a number, NaN or infinite, or, in the one-array-column
layout, when the array is null or has the wrong length. Bad rows are reported, never dropped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Features:
    matrix: np.ndarray
    """float32 (rows, features); bad rows hold zeros."""
    errors: dict[int, str]
    """A message for each bad row (sparse: most batches have none)."""

    @functools.cached_property
    def bad(self) -> np.ndarray:
        """A boolean mask of the bad rows (computed once)."""
        mask = np.zeros(len(self.matrix), bool)
        mask[list(self.errors)] = True
        return mask

    def error_array(self) -> pa.Array:
        if not self.errors:
            return pa.nulls(len(self.matrix), pa.string())
        return pa.array([self.errors.get(i) for i in range(len(self.matrix))], pa.string())


def from_columns(arrays: list[pa.Array], names: list[str]) -> Features:
    """One Arrow array per feature (numbers, or text holding numbers)."""
    n = len(arrays[0]) if arrays else 0
    matrix = np.empty((n, len(names)), np.float32)
    errors: dict[int, str] = {}
    for j, (array, name) in enumerate(zip(arrays, names, strict=True)):
        values, problems = _to_float(array, name)
        matrix[:, j] = values
        for row, message in problems.items():
            errors.setdefault(row, message)
    _explain_non_finite(matrix, names, errors)
    return _zero_bad_rows(matrix, errors)


def from_array_column(array: pa.Array, names: list[str], column: str) -> Features:
    """One list column holding all features of a row, in signature order."""
    k, n = len(names), len(array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False)
    errors: dict[int, str] = {}
    for row in np.flatnonzero(lengths != k):
        errors[int(row)] = (
            f"'{column}' is null"
            if lengths[row] < 0
            else f"'{column}' has {lengths[row]} values; expected {k}"
        )
    matrix = np.zeros((n, k), np.float32)
    good = lengths == k
    if good.all():
        values = pc.cast(array.flatten(), pa.float32(), safe=False)
        matrix = values.to_numpy(zero_copy_only=False, writable=True).reshape(n, k)
    elif good.any():
        kept = array.filter(pa.array(good))
        values = pc.cast(kept.flatten(), pa.float32(), safe=False)
        matrix[good] = values.to_numpy(zero_copy_only=False).reshape(-1, k)
    _explain_non_finite(matrix, names, errors)
    return _zero_bad_rows(matrix, errors)


def _to_float(array: pa.Array, name: str) -> tuple[np.ndarray, dict[int, str]]:
    """Values as float64 (NaN where unusable) and a message per unusable row."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    problems: dict[int, str] = {}
    nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        values = _parse_text(array, name, problems)
    else:
        values = pc.cast(array, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    if nulls is not None:
        for row in np.flatnonzero(nulls):
            problems[int(row)] = f"feature '{name}' is null"
        values = np.where(nulls, np.nan, values)
    return values, problems


def _parse_text(array: pa.Array, name: str, problems: dict[int, str]) -> np.ndarray:
    try:
        parsed: np.ndarray = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
        return parsed
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = np.full(len(array), np.nan)
    for row, text in enumerate(array.to_pylist()):
        if text is None:
            continue
        try:
            values[row] = float(text)
        except ValueError:
            problems[row] = f"feature '{name}': {text!r} is not a number"
    return values


def _explain_non_finite(matrix: np.ndarray, names: list[str], errors: dict[int, str]) -> None:
    finite = np.isfinite(matrix)
    for row in np.flatnonzero(~finite.all(axis=1)):
        if int(row) not in errors:
            col = int(np.flatnonzero(~finite[row])[0])
            kind = "NaN" if np.isnan(matrix[row, col]) else "infinite"
            errors[int(row)] = f"feature '{names[col]}' is {kind}"


def _zero_bad_rows(matrix: np.ndarray, errors: dict[int, str]) -> Features:
    features = Features(np.ascontiguousarray(matrix, np.float32), errors)
    if errors:
        features.matrix[features.bad] = 0.0
    return features
