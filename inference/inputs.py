"""Turn what a user sends into the exact float32 matrix the graph takes, or say what is wrong.

The HTTP service and the Spark job both go through here, so a value refused online is refused
offline with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inference.errors import InvalidInputError
from inference.metadata import InputInfo

FLOAT = np.float32


def as_feature_matrix(data: Any, signature: InputInfo) -> np.ndarray:
    """A (rows, features) float32 array from an array-like, checked against the signature."""
    try:
        matrix = np.asarray(data, dtype=FLOAT)
    except (ValueError, TypeError) as e:
        raise InvalidInputError(
            f"features must be numbers; could not read them as {np.dtype(FLOAT).name}: {e}"
        ) from e
    n_features = len(signature.feature_names)
    if matrix.ndim != 2 or matrix.shape[1] != n_features:
        raise InvalidInputError(
            f"expected a 2-D batch of shape [rows, {n_features}] "
            f"({', '.join(signature.feature_names)}), got shape {list(matrix.shape)}"
        )
    check_rows(matrix, signature)
    return matrix


def from_columns(columns: Mapping[str, Any], signature: InputInfo) -> np.ndarray:
    """A feature matrix from named columns; names must match the signature exactly."""
    expected = signature.feature_names
    missing = [name for name in expected if name not in columns]
    unknown = [name for name in columns if name not in expected]
    if missing or unknown:
        raise InvalidInputError(_name_mismatch(missing, unknown, expected))
    lengths = {name: np.shape(columns[name]) for name in expected}
    if len(set(lengths.values())) != 1 or len(lengths[expected[0]]) != 1:
        raise InvalidInputError(
            f"feature columns must be 1-D and of equal length; got shapes {lengths}"
        )
    return as_feature_matrix(np.column_stack([columns[name] for name in expected]), signature)


def from_records(records: Sequence[Mapping[str, Any]], signature: InputInfo) -> np.ndarray:
    """A feature matrix from one mapping of feature name → value per row."""
    expected = signature.feature_names
    rows = []
    for i, record in enumerate(records):
        missing = [name for name in expected if name not in record]
        unknown = [name for name in record if name not in expected]
        if missing or unknown:
            raise InvalidInputError(f"row {i}: {_name_mismatch(missing, unknown, expected)}")
        rows.append([record[name] for name in expected])
    return as_feature_matrix(rows, signature)


def check_rows(matrix: np.ndarray, signature: InputInfo) -> None:
    """Refuse an empty batch, and NaN or infinity unless the model accepts them."""
    if matrix.shape[0] == 0:
        raise InvalidInputError("the batch is empty: send at least one row")
    if signature.accepts_non_finite:
        return
    bad = invalid_rows(matrix)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(matrix[row]))[0])
        raise InvalidInputError(
            f"row {row}, feature {signature.feature_names[col]!r}: {matrix[row, col]} is missing "
            f"or not a finite number ({int(bad.sum())} such row(s)); this model does not accept "
            "null, NaN or infinity"
        )


def invalid_rows(matrix: np.ndarray) -> np.ndarray:
    """A boolean mask of rows holding NaN or infinity (for per-row error reporting)."""
    result: np.ndarray = ~np.isfinite(matrix).all(axis=1)
    return result


def _name_mismatch(missing: list[str], unknown: list[str], expected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing feature(s) {', '.join(map(repr, missing))}")
    if unknown:
        parts.append(f"unknown feature(s) {', '.join(map(repr, unknown))}")
    return f"{' and '.join(parts)}; this model expects: {', '.join(expected)}"
