"""Score one Arrow batch with a model that is not tabular: read each input's column, group the
good rows by their shapes, run each group, and put the outputs back in row order.

Why groups: an input with a dynamic inner dimension (a sequence length) takes rows of one
length per run; rows of different lengths are run apart, never padded or mixed (a graph reads
padding as data). With fixed shapes every good row is in the one group.

Why halving: a run the model refuses (a token id past its table, lengths its graph cannot
broadcast) is split in halves until each refused row is alone, so it gets its message and the
other rows their outputs; a batch the model takes pays nothing for it. Each run goes through
`Model.check`, so whatever the core refuses is refused here too, one row at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

import inference
from batch.spec import ScoringSpec
from batch.tensor_inputs import Read, read
from batch.tensor_outputs import Piece, column, errors_column, labels

RUN_VALUES = 1 << 22
"""Values of one input in a run, at most (rows are never split): bounds a run's memory where
rows are large (images), while rows of a small tensor still run a whole Arrow batch at once."""


class _RowsDiffer(Exception):
    """An output whose first axis does not have one row per input row."""


REFUSED = (inference.InvalidInputError, _RowsDiffer)
"""What refuses a run's rows: the core's checks and onnxruntime's refusals (`Model.outputs`
turns those into `InvalidInputError`), and outputs that are not one row per row."""


def score_tensors(
    spec: ScoringSpec, model: inference.Model, arrays: list[pa.Array]
) -> pa.StructArray:
    """One batch of the input columns (in `spec.tensor_inputs` order) → the struct of outputs."""
    n = len(arrays[0]) if arrays else 0
    reads = [read(a, info) for a, info in zip(arrays, spec.tensor_inputs, strict=True)]
    errors: dict[int, str] = {}
    for one in reads:  # a row's first input with a problem names it
        for row, message in one.errors.items():
            errors.setdefault(row, message)
    pieces: list[Piece] = []
    for rows in _groups(reads, spec, n, errors):
        for chunk in _chunks(rows, reads, spec):
            pieces += _run(spec, model, reads, chunk, errors)
    columns = [column(pieces, output, n) for output in spec.tensor_outputs]
    if spec.label_from is not None and spec.classes is not None:
        columns.append(labels(columns[spec.outputs.index(spec.label_from)], spec.classes))
    columns.append(errors_column(errors, n))
    return pa.StructArray.from_arrays(columns, names=[name for name, _ in spec.fields])


def _groups(
    reads: list[Read], spec: ScoringSpec, n: int, errors: dict[int, str]
) -> list[np.ndarray]:
    """The good rows, in groups of equal shapes across all inputs."""
    good = np.flatnonzero(~np.isin(np.arange(n), list(errors))) if errors else np.arange(n)
    if not len(good):
        return []
    if all(-1 not in info.shape for info in spec.tensor_inputs):
        return [good]  # fixed shapes: every good row has them
    keys = np.concatenate([one.shapes[good] for one in reads], axis=1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    return [good[group == g] for g in range(int(group.max()) + 1)]


def _chunks(rows: np.ndarray, reads: list[Read], spec: ScoringSpec) -> Iterator[np.ndarray]:
    """A group in runs of at most `RUN_VALUES` values per input (one row where the graph takes
    one row at a time)."""
    per_row = max(math.prod(one.shapes[rows[0]].tolist()) for one in reads)
    size = 1 if spec.rows_per_run == 1 else max(1, RUN_VALUES // max(per_row, 1))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _run(
    spec: ScoringSpec,
    model: inference.Model,
    reads: list[Read],
    rows: np.ndarray,
    errors: dict[int, str],
) -> list[Piece]:
    """The outputs of `rows`, halving a refused run until each refused row is alone."""
    try:
        feeds = model.check(_feeds(reads, spec, rows))
        outputs = model.outputs(feeds, list(spec.outputs))
        _check_rows(outputs, len(rows))
    except REFUSED as e:
        if len(rows) == 1:
            errors[int(rows[0])] = _reason(e)
            return []
        half = len(rows) // 2
        return _run(spec, model, reads, rows[:half], errors) + _run(
            spec, model, reads, rows[half:], errors
        )
    return [(rows, outputs)]


def _feeds(reads: list[Read], spec: ScoringSpec, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each input's rows as one array `[rows, *shape]`: a view where they lie side by side."""
    feeds = {}
    for one, info in zip(reads, spec.tensor_inputs, strict=True):
        shape = one.shapes[rows[0]].tolist()
        count = math.prod(shape)
        starts = one.offsets[rows]
        if (np.diff(starts) == count).all():
            values = one.values[starts[0] : starts[0] + len(rows) * count]
        else:
            values = one.values[starts[:, None] + np.arange(count)]
        feeds[info.name] = values.reshape(len(rows), *shape)
    return feeds


def _check_rows(outputs: dict[str, np.ndarray], rows: int) -> None:
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise _RowsDiffer(
                f"output {name!r} has shape {list(value.shape)} for {rows} row(s): scoring "
                "needs one output row per input row"
            )


def _reason(error: Exception) -> str:
    """A refused row's message: the core's words, for a row instead of a request."""
    return str(error).replace("cannot run on this input", "cannot run on this row", 1)
