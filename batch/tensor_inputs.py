"""One Arrow column → one model input's values for every row, with a reason for each row that
cannot be scored.

A row holds an array (flat, or nested as deep as the input's per-row shape) or, for an input of
shape [-1], a scalar. Everything is vectorised over the batch: the leaf values of all rows stay
one flat array, in row order, with each row's offset and shape beside it, and Python loops only
over the rows that are bad, to write their messages. Bad rows are reported, never dropped:
null, ragged, the wrong number of values or shape, a null inside, NaN or infinity where the
model refuses them, text that is not a number, an integer out of the input's range.

The element rules are the core's (`inference.inputs`): numbers become a float input's type, an
integer input takes integers only and within its range, a BOOL input booleans, a BYTES input
text. One addition, as for tabular features: text holding numbers is read as numbers, because
CSV and JSON sources give text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.spec import TensorInput
from inference.inputs import FLOATS, NUMPY_TYPES


@dataclass
class Read:
    """One input's column, read."""

    values: np.ndarray
    """The leaf values of all rows, in row order, as the input's numpy type (bad rows' leaves
    hold anything)."""
    offsets: np.ndarray
    """int64, rows + 1: row r's leaves are `values[offsets[r]:offsets[r + 1]]`."""
    shapes: np.ndarray
    """int64 (rows, rank): each good row's shape as the input takes it."""
    errors: dict[int, str]


def read(array: pa.Array, info: TensorInput) -> Read:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    errors: dict[int, str] = {}
    leaf, counts, nested = unnest(array, info.label, errors)
    offsets = np.zeros(len(array) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    shapes = _row_shapes(nested, counts, info, errors)
    values = _elements(leaf, offsets, info, errors)
    return Read(values, offsets, shapes, errors)


def unnest(
    array: pa.Array, label: str, errors: dict[int, str]
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The leaves of a (nested) list column, how many each row holds, and each row's nested
    shape (rows, depth); null and ragged rows get their message."""
    n = len(array)
    if not _is_list(array.type):  # a scalar per row
        _report(np.flatnonzero(_nulls(array)), errors, f"{label} is null")
        return array, np.ones(n, np.int64), np.zeros((n, 0), np.int64)
    lengths = _lengths(array)
    _report(np.flatnonzero(lengths < 0), errors, f"{label} is null")
    shape = [np.maximum(lengths, 0)]
    owner, children = np.arange(n), shape[0]  # each element's row, and its list's length
    child = array.flatten()
    while _is_list(child.type):
        owner = np.repeat(owner, children)
        sub = _lengths(child)
        first = _first_per_row(sub, owner, n)
        _report(owner[sub < 0], errors, f"{label} holds a null array")
        ragged = f"{label} is ragged: its arrays at depth {len(shape) + 1} differ in length"
        _report(owner[sub != first[owner]], errors, ragged)
        shape.append(first)
        children = np.maximum(sub, 0)
        child = child.flatten()
    counts = np.bincount(owner, children, minlength=n) if len(shape) > 1 else children
    return child, counts.astype(np.int64), np.stack(shape, axis=1)


def _first_per_row(sub: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Each row's first list length at this depth (0 for a row with none): a regular row has
    that length everywhere at this depth."""
    first = np.zeros(n, np.int64)
    if len(owner):
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        first[owner[starts]] = np.maximum(sub[starts], 0)
    return first


def _row_shapes(
    nested: np.ndarray, counts: np.ndarray, info: TensorInput, errors: dict[int, str]
) -> np.ndarray:
    """Each row's shape for the input: the nested shape itself, or a flat row's count laid
    out over the input's per-row shape (its one dynamic dimension inferred)."""
    rank, depth = len(info.shape), nested.shape[1]
    if depth == rank:
        _report_shapes(nested, info, errors)
        return nested
    if depth > 1:
        wrong = f"{info.label} holds arrays nested {depth} deep; input '{info.name}' takes"
        _report(np.arange(len(counts)), errors, f"{wrong} {_expected(info)}")
        return np.zeros((len(counts), rank), np.int64)
    return _flat_shapes(counts, info, errors)


def _flat_shapes(counts: np.ndarray, info: TensorInput, errors: dict[int, str]) -> np.ndarray:
    fixed = math.prod(d for d in info.shape if d != -1)
    dynamic = [axis for axis, d in enumerate(info.shape) if d == -1]
    shapes = np.tile(np.array(info.shape, np.int64), (len(counts), 1))
    if not dynamic:
        for row in np.flatnonzero(counts != fixed):
            wrong = f"{info.label} has {counts[row]} values"
            errors.setdefault(int(row), f"{wrong}; expected {fixed} (shape {list(info.shape)})")
        return shapes
    if len(dynamic) > 1:
        flat = f"{info.label} is flat, but input '{info.name}' takes {_expected(info)}"
        _report(np.arange(len(counts)), errors, f"{flat}: send nested arrays")
        return shapes
    for row in np.flatnonzero(counts % fixed if fixed else counts):
        wrong = f"{info.label} has {counts[row]} values, not a multiple of {fixed}"
        errors.setdefault(int(row), f"{wrong} (shape {list(info.shape)}, -1: any size)")
    shapes[:, dynamic[0]] = counts // max(fixed, 1)
    return shapes


def _report_shapes(shapes: np.ndarray, info: TensorInput, errors: dict[int, str]) -> None:
    wanted = np.array(info.shape, np.int64)
    wrong = ((shapes != wanted) & (wanted != -1)).any(axis=1)
    for row in np.flatnonzero(wrong):
        got = f"{info.label} has shape {shapes[row].tolist()}"
        errors.setdefault(int(row), f"{got}; expected {list(info.shape)} (-1: any size)")


def _expected(info: TensorInput) -> str:
    rank = len(info.shape)
    if rank == 0:
        return "one value per row"
    nested = f", flat or nested {rank} deep" if rank > 1 else ""
    return f"an array of shape {list(info.shape)} per row{nested}"


def _elements(
    leaf: pa.Array, offsets: np.ndarray, info: TensorInput, errors: dict[int, str]
) -> np.ndarray:
    """The leaves as the input's numpy type; rows holding a null, a value the type cannot take
    without changing it, or a non-finite number (where refused) get their message."""
    dtype = NUMPY_TYPES[info.datatype]
    rows = _Rows(offsets)
    if leaf.null_count:
        _report(rows(np.flatnonzero(_nulls(leaf))), errors, f"{info.label} holds a null value")
    text = pa.types.is_string(leaf.type) or pa.types.is_large_string(leaf.type)
    if text and info.datatype != "BYTES":
        leaf = _parse(leaf, info, rows, errors)
    wrong = _type_problem(leaf.type, info.datatype)
    if wrong is not None:
        _report(rows(np.arange(len(leaf))), errors, f"{info.label} holds {wrong}")
        return np.zeros(len(leaf), dtype)
    if info.datatype == "BYTES":
        return np.asarray(leaf.to_numpy(zero_copy_only=False), object)
    values = _numbers(leaf, info, rows, errors)
    if info.finite:
        _report_non_finite(values, info, rows, errors)
    return values


def _numbers(leaf: pa.Array, info: TensorInput, rows: _Rows, errors: dict[int, str]) -> np.ndarray:
    if leaf.null_count:
        leaf = pc.fill_null(leaf, False if pa.types.is_boolean(leaf.type) else 0)
    if pa.types.is_decimal(leaf.type):
        leaf = pc.cast(leaf, pa.float64())
    raw = leaf.to_numpy(zero_copy_only=False)
    dtype = NUMPY_TYPES[info.datatype]
    if raw.dtype.kind in "iu" and dtype.kind in "iu":
        _report_out_of_range(raw, info, rows, errors)
    with np.errstate(over="ignore", invalid="ignore"):  # too large: infinity, refused below
        values: np.ndarray = raw.astype(dtype, copy=False)
    return values


def _type_problem(kind: pa.DataType, datatype: str) -> str | None:
    """What a column of `kind` holds that the datatype never takes (every row is then bad)."""
    t = pa.types
    if datatype == "BYTES":
        text = t.is_string(kind) or t.is_large_string(kind) or t.is_binary(kind)
        return None if text or t.is_large_binary(kind) else f"{kind} values; BYTES takes text"
    if datatype == "BOOL":
        return None if t.is_boolean(kind) else f"{kind} values; BOOL takes booleans"
    if t.is_integer(kind) or (datatype in FLOATS and (t.is_floating(kind) or t.is_decimal(kind))):
        return None
    takes = "numbers" if datatype in FLOATS else "integers (cast the column to an integer type)"
    return f"{kind} values; {datatype} takes {takes}"


def _parse(leaf: pa.Array, info: TensorInput, rows: _Rows, errors: dict[int, str]) -> pa.Array:
    """Text as numbers: float64 for a float input, int64 for an integer one (a BOOL input
    takes no text: its type problem is reported by the caller)."""
    if info.datatype == "BOOL":
        return leaf
    target = pa.float64() if info.datatype in FLOATS else pa.int64()
    try:
        return pc.cast(leaf, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    parse = float if info.datatype in FLOATS else int
    what = "a number" if info.datatype in FLOATS else "an integer"
    values: list[float | int | None] = []
    for i, text in enumerate(leaf.to_pylist()):
        try:
            values.append(None if text is None else parse(text))
        except ValueError:
            values.append(0)
            errors.setdefault(rows.one(i), f"{info.label} holds {text!r}, not {what}")
    return pa.array(values, target)


def _report_out_of_range(
    raw: np.ndarray, info: TensorInput, rows: _Rows, errors: dict[int, str]
) -> None:
    limits, own = np.iinfo(NUMPY_TYPES[info.datatype]), np.iinfo(raw.dtype)
    if own.min >= limits.min and own.max <= limits.max:
        return  # every value of the column's type fits
    wrong = np.flatnonzero((raw < limits.min) | (raw > limits.max))
    for i in wrong[np.unique(rows(wrong), return_index=True)[1]]:
        message = f"{info.label} holds {raw[i]}, out of the range of {info.datatype}"
        errors.setdefault(rows.one(int(i)), message)


def _report_non_finite(
    values: np.ndarray, info: TensorInput, rows: _Rows, errors: dict[int, str]
) -> None:
    if values.size == 0 or np.isfinite(values.sum(dtype=np.float64)):
        return  # one pass: NaN and infinity propagate to the sum
    wrong = np.flatnonzero(~np.isfinite(values))
    for i in wrong[np.unique(rows(wrong), return_index=True)[1]]:
        kind = "NaN" if np.isnan(values[i]) else "infinity"
        message = f"{info.label} holds {kind}; this model does not accept NaN or infinity"
        errors.setdefault(rows.one(int(i)), message)


class _Rows:
    """Leaf positions → the rows that hold them (for the few leaves that are bad)."""

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets

    def __call__(self, leaves: np.ndarray) -> np.ndarray:
        rows: np.ndarray = np.searchsorted(self.offsets, leaves, side="right") - 1
        return rows

    def one(self, leaf: int) -> int:
        return int(self(np.array([leaf]))[0])


def _report(rows: np.ndarray, errors: dict[int, str], message: str) -> None:
    for row in np.unique(rows):
        errors.setdefault(int(row), message)


def _lengths(array: pa.Array) -> np.ndarray:
    """Each list's length; -1 for a null list."""
    lengths: np.ndarray = pc.fill_null(pc.list_value_length(array), -1).to_numpy(
        zero_copy_only=False
    )
    return lengths.astype(np.int64, copy=False)


def _nulls(array: pa.Array) -> np.ndarray:
    if not array.null_count:
        return np.zeros(len(array), bool)
    nulls: np.ndarray = array.is_null().to_numpy(zero_copy_only=False)
    return nulls


def _is_list(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind))
