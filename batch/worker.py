"""What runs inside Spark's Python workers: one cached session, Arrow batches in, a struct out.

The session is cached at module level, keyed by the bundle's sha256, the thread count, the
providers and the task's GPU, so a Python worker builds it once and reuses it for every
partition and every job that scores the same bundle. It is never rebuilt per row, per batch or
per partition. The bundle folder reaches executors through `SparkContext.addFile`, not through
the pickled closure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import inference
from batch import convert

_MODELS: dict[tuple[object, ...], inference.Model] = {}


@dataclass(frozen=True)
class ScoringSpec:
    """Everything a worker needs, small enough to pickle into the UDF."""

    shipped_name: str
    """The bundle folder's name among the files shipped with `SparkContext.addFile`."""
    driver_path: str
    """The bundle folder on the driver (used where executors share its file system)."""
    sha256: str
    threads: int
    feature_names: tuple[str, ...]
    features_column: str | None
    outputs: tuple[str, ...]
    """ONNX outputs to return: by default the model's scores and class index (or values)."""
    classes: tuple[str, ...] | None
    widths: tuple[int, ...]
    """Width of each 2-D output in `outputs` (0 for the 1-D class index)."""
    providers: tuple[str, ...] = ("cpu",)
    """onnxruntime execution providers, in order (`cuda` runs on the GPU Spark gave the task)."""
    allow_cpu_fallback: bool = False

    @property
    def input_columns(self) -> list[str]:
        """The columns the model reads: its features, or the one array column holding them."""
        return [self.features_column] if self.features_column else list(self.feature_names)

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The struct the UDF returns: (name, Spark SQL type)."""
        fields = [
            (name, "bigint" if width == 0 else "array<float>")
            for name, width in zip(self.outputs, self.widths, strict=True)
        ]
        if self.classes is not None and "class_index" in self.outputs:
            fields.append(("label", "string"))
        return [*fields, ("error", "string")]

    @property
    def ddl(self) -> str:
        return ", ".join(f"`{name}` {kind}" for name, kind in self.fields)


@dataclass(frozen=True)
class OutputColumn:
    """One output column: `field` of the scoring struct, or its element `index` when set."""

    name: str
    field: str
    index: int | None = None


def output_layout(spec: ScoringSpec, prefix: str) -> list[OutputColumn]:
    """The output columns, in order: each struct field, each class score after `scores`, and
    `prediction` after a one-wide `predictions`. The Spark and the Arrow-file paths both use it,
    so they write the same columns."""
    columns: list[OutputColumn] = []
    for name, _ in spec.fields:
        columns.append(OutputColumn(f"{prefix}{name}", name))
        if name == "scores" and spec.classes is not None:
            columns += [
                OutputColumn(f"{prefix}score_{safe_name(label)}", "scores", i)
                for i, label in enumerate(spec.classes)
            ]
        if name == "predictions" and spec.widths[spec.outputs.index(name)] == 1:
            columns.append(OutputColumn(f"{prefix}prediction", "predictions", 0))
    return columns


def safe_name(label: str) -> str:
    """A class label as a column-name suffix (Parquet refuses ' ,;{}()=' and control chars)."""
    return re.sub(r"[\s,;{}()=]+", "_", label).strip("_") or "class"


def flatten(struct: pa.StructArray, layout: list[OutputColumn]) -> list[pa.Array]:
    """The struct `score_arrays` returns, as the layout's columns (Arrow's `output_columns`)."""
    arrays: list[pa.Array] = []
    for column in layout:
        value = struct.field(column.field)
        arrays.append(value if column.index is None else pc.list_element(value, column.index))
    return arrays


def spec_for(
    model: inference.Model,
    outputs: Sequence[str] | None,
    features_column: str | None,
    *,
    shipped_name: str = "",
    threads: int = 1,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> ScoringSpec:
    """The spec that scores with `model` (its output names already checked by the caller)."""
    meta = model.metadata
    names = list(outputs) if outputs else meta.default_outputs
    known = {o.name: o for o in meta.outputs}
    return ScoringSpec(
        shipped_name=shipped_name,
        driver_path=str(model.path.resolve()),
        sha256=meta.onnx.sha256,
        threads=threads,
        feature_names=tuple(meta.feature_names),
        features_column=features_column,
        outputs=tuple(names),
        classes=tuple(meta.classes) if meta.classes else None,
        widths=tuple(known[n].shape[1] if len(known[n].shape) == 2 else 0 for n in names),
        providers=tuple(providers),
        allow_cpu_fallback=allow_cpu_fallback,
    )


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


def score_arrays(
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
