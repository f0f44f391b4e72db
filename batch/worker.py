"""What runs inside Spark's Python workers: one cached session, Arrow batches in, a struct out
(the SQL function's UDF), or whole record batches in and the same batches with the output
columns added out (`score_dataframe`'s `mapInArrow`).

The session is cached at module level, keyed by the bundle's sha256, the thread count, the
providers and the task's GPU, so a Python worker builds it once and reuses it for every
partition and every job that scores the same bundle. It is never rebuilt per row, per batch or
per partition. The bundle folder reaches executors through `SparkContext.addFile`, not through
the pickled closure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import inference
from batch import convert
from batch.model_spec import spec_for
from batch.spec import OutputColumn, ScoringSpec
from batch.tensor_batch import score_tensors

__all__ = [
    "BatchPlan",
    "ScoringSpec",
    "flatten",
    "model_for",
    "score_arrays",
    "score_batches",
    "score_record_batches",
    "spec_for",
]
_MODELS: dict[tuple[object, ...], inference.Model] = {}


def flatten(struct: pa.StructArray, layout: list[OutputColumn]) -> list[pa.Array]:
    """The struct `score_arrays` returns, as the layout's columns (Arrow's `output_columns`)."""
    arrays: list[pa.Array] = []
    for column in layout:
        value = struct.field(column.field)
        arrays.append(value if column.index is None else pc.list_element(value, column.index))
    return arrays


def model_for(spec: ScoringSpec) -> inference.Model:
    gpu = task_gpu()
    key = (spec.sha256, spec.threads, spec.providers, spec.allow_cpu_fallback, gpu)
    model = _MODELS.get(key)
    if model is None:
        options = inference.RuntimeOptions(
            providers=spec.providers,
            allow_cpu_fallback=spec.allow_cpu_fallback,
            intra_op_threads=spec.threads,
            inter_op_threads=1,
            allow_spinning=False,
            device_id=gpu,
        )
        model = inference.load(_bundle_path(spec), options=options)
        if model.metadata.onnx.sha256 != spec.sha256:
            raise inference.BundleError(
                f"{model.path}: the bundle changed since the job started (sha256 differs)"
            )
        _MODELS[key] = model
    return model


def task_gpu() -> int:
    """The GPU Spark gave this task (`spark.task.resource.gpu.amount`); 0 outside such a task."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpus = context.resources().get("gpu") if context is not None else None
        return int(gpus.addresses[0]) if gpus is not None and gpus.addresses else 0
    except Exception:  # no Spark here, or an address that is not a number: the first GPU
        return 0


def _bundle_path(spec: ScoringSpec) -> str:
    if not spec.shipped_name:  # not shipped (plain Python): the driver's folder
        return spec.driver_path
    try:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(spec.shipped_name)
        if os.path.isdir(shipped):
            return shipped
    except Exception:  # no SparkContext here (plain Python): use the driver path
        pass
    return spec.driver_path


def score_batches(
    spec: ScoringSpec, batches: Iterator[pa.Array | tuple[pa.Array, ...]]
) -> Iterator[pa.StructArray]:
    """The body of the scalar-iterator Arrow UDF."""
    model = model_for(spec)
    for batch in batches:
        arrays = list(batch) if isinstance(batch, tuple) else [batch]
        yield score_arrays(spec, model, arrays)


@dataclass(frozen=True)
class BatchPlan:
    """How `score_record_batches` reads a record batch and what it gives back, decided on the
    driver: the argument columns by position, how many leading columns are kept (the table's
    own; after them come vectors converted for the model, dropped), the names of the batch it
    gives back, and the Arrow types of the columns it adds (what Spark expects, exactly)."""

    spec: ScoringSpec
    layout: tuple[OutputColumn, ...]
    arguments: tuple[int, ...]
    kept: int
    names: tuple[str, ...]
    types: tuple[pa.DataType, ...]


def score_record_batches(
    plan: BatchPlan, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The body of `score_dataframe`'s `mapInArrow`: each batch with the output columns added."""
    model = model_for(plan.spec)
    for batch in batches:
        struct = score_arrays(plan.spec, model, [batch.column(i) for i in plan.arguments])
        outputs = [
            array if array.type == kind else array.cast(kind)
            for array, kind in zip(flatten(struct, list(plan.layout)), plan.types, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(
            [*batch.columns[: plan.kept], *outputs], names=list(plan.names)
        )


def score_arrays(
    spec: ScoringSpec, model: inference.Model, arrays: list[pa.Array]
) -> pa.StructArray:
    """One Arrow batch of the input columns → the struct of outputs (`spec.fields`)."""
    if spec.tensor_inputs:
        return score_tensors(spec, model, arrays)
    return _score_tabular(spec, model, arrays)


def _score_tabular(
    spec: ScoringSpec, model: inference.Model, arrays: list[pa.Array]
) -> pa.StructArray:
    names = list(spec.feature_names)
    if spec.features_column is not None:
        features = convert.from_array_column(arrays[0], names, spec.features_column)
    else:
        features = convert.from_columns(arrays, names)
    n = len(features.matrix)
    bad = features.bad if features.errors else None
    mask = pa.array(bad) if bad is not None else None
    # Bad rows hold zeros: scoring them costs less than copying the good ones out; their
    # outputs are masked to null below.
    feeds = {model.metadata.inputs[0].name: features.matrix}
    outputs = model.outputs(feeds, list(spec.outputs)) if n else {}
    columns: list[pa.Array] = []
    for name, width in zip(spec.outputs, spec.widths, strict=True):
        value = outputs.get(name)
        if value is None:
            columns.append(pa.nulls(0, pa.int64() if width == 0 else pa.list_(pa.float32())))
        elif width == 0:
            columns.append(pa.array(value, pa.int64(), mask=bad))
        else:
            offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
            values = pa.array(np.ascontiguousarray(value, np.float32).ravel())
            columns.append(pa.ListArray.from_arrays(offsets, values, mask=mask))
    if spec.classes is not None and "class_index" in spec.outputs:
        index = pa.array(outputs["class_index"] if n else np.zeros(0, np.int64), mask=bad)
        columns.append(pc.take(pa.array(spec.classes, pa.string()), index))  # null stays null
    columns.append(features.error_array())
    return pa.StructArray.from_arrays(columns, names=[name for name, _ in spec.fields])
