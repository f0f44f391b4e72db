"""Model outputs → Arrow columns: each row's slice of an output as nested lists of its per-row
rank, with the element type Spark reads for the ONNX datatype (`batch.spec.SPARK_TYPES`), and
null for the rows that were not scored.

Rows are scored in pieces (one per group of equal shapes, or per part of a refused run), so a
column is built piece by piece, each a regular block whose list offsets are plain ranges, and
put back in row order with one `take` (skipped when one piece holds every row in order).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.spec import TensorOutput

ARROW_TYPES = {
    "FP16": pa.float32(), "FP32": pa.float32(), "FP64": pa.float64(), "BOOL": pa.bool_(),
    "BYTES": pa.string(), "INT8": pa.int8(), "INT16": pa.int16(), "INT32": pa.int32(),
    "INT64": pa.int64(), "UINT8": pa.int16(), "UINT16": pa.int32(), "UINT32": pa.int64(),
    "UINT64": pa.decimal128(20, 0),
}  # fmt: skip
"""As `SPARK_TYPES`, in Arrow's words."""
Piece = tuple[np.ndarray, dict[str, np.ndarray]]
"""Rows of the batch (their positions) and the outputs of their run."""


def arrow_type(output: TensorOutput) -> pa.DataType:
    kind = ARROW_TYPES[output.datatype]
    for _ in range(output.rank):
        kind = pa.list_(kind)
    return kind


def column(pieces: list[Piece], output: TensorOutput, rows: int) -> pa.Array:
    """The output's column for a batch of `rows` rows; rows in no piece are null."""
    if not pieces:
        return pa.nulls(rows, arrow_type(output))
    blocks = [nested(values[output.name], output.datatype) for _, values in pieces]
    positions = np.concatenate([where for where, _ in pieces])
    if len(positions) == rows and (positions == np.arange(rows)).all():
        return pa.concat_arrays(blocks) if len(blocks) > 1 else blocks[0]
    index = np.full(rows, -1, np.int64)
    index[positions] = np.arange(len(positions))
    return pc.take(pa.concat_arrays(blocks), pa.array(index, mask=index < 0))


def nested(values: np.ndarray, datatype: str) -> pa.Array:
    """A `[rows, d1, ..., dk]` block as `rows` lists nested k deep (a scalar per row for k=0)."""
    array = leaves(values.reshape(-1), datatype)
    for depth in range(values.ndim - 1, 0, -1):
        lists = math.prod(values.shape[:depth])
        offsets = np.arange(lists + 1, dtype=np.int32) * np.int32(values.shape[depth])
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def leaves(flat: np.ndarray, datatype: str) -> pa.Array:
    if datatype == "UINT64":  # beyond bigint: decimal(20,0) holds every value
        return pa.array(flat, pa.uint64()).cast(ARROW_TYPES[datatype])
    if datatype == "FP16":
        flat = flat.astype(np.float32)
    return pa.array(flat, ARROW_TYPES[datatype])


def labels(class_index: pa.Array, classes: tuple[str, ...]) -> pa.Array:
    """Each row's class label; null where the index is null or names no class."""
    valid = pc.and_(pc.greater_equal(class_index, 0), pc.less(class_index, len(classes)))
    index = pc.if_else(valid, class_index, pa.scalar(None, class_index.type))
    return pc.take(pa.array(classes, pa.string()), index)


def errors_column(errors: dict[int, str], rows: int) -> pa.Array:
    if not errors:
        return pa.nulls(rows, pa.string())
    return pa.array([errors.get(i) for i in range(rows)], pa.string())
