"""What a scoring task needs to know, decided once on the driver and pickled into every task:
which columns feed the model, which outputs come back and as which Spark types.

Two kinds of model, two layouts. A tabular model (one `[rows, features]` input with feature
names) reads one column per feature, or one array column holding them all, and writes the
columns it always has (`scores`, `class_index`, `label`, ...). Any other model reads one column
per input (`TensorInput`: an array per row, flat or nested, or a scalar) and writes one column
per output, holding each row's slice of it as nested arrays (`TensorOutput`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPARK_TYPES = {
    "FP16": "float", "FP32": "float", "FP64": "double", "BOOL": "boolean", "BYTES": "string",
    "INT8": "tinyint", "INT16": "smallint", "INT32": "int", "INT64": "bigint",
    "UINT8": "smallint", "UINT16": "int", "UINT32": "bigint", "UINT64": "decimal(20,0)",
}  # fmt: skip
"""The Spark type of an output element: Spark has no half floats and no unsigned integers, so
those widen to the next type that holds every value."""


@dataclass(frozen=True)
class TensorInput:
    """One model input read from one column: per row, an array of `shape` (the input's shape
    without its batch axis, -1 for any size), flat or nested, or a scalar when `shape` is ()."""

    name: str
    column: str
    datatype: str
    shape: tuple[int, ...]
    finite: bool
    """Whether NaN and infinity are refused (a float input whose graph does not accept them)."""

    @property
    def label(self) -> str:
        """How a message names it: the column, and the input when their names differ."""
        if self.column == self.name:
            return f"'{self.column}'"
        return f"'{self.column}' (input '{self.name}')"


@dataclass(frozen=True)
class TensorOutput:
    name: str
    datatype: str
    rank: int
    """The rank of one row of it: 0 for an output of shape [-1] (a scalar per row)."""

    @property
    def spark_type(self) -> str:
        return "array<" * self.rank + SPARK_TYPES[self.datatype] + ">" * self.rank


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
    """Width of each 2-D output in `outputs` (0 for the 1-D class index); tabular only."""
    providers: tuple[str, ...] = ("cpu",)
    """onnxruntime execution providers, in order (`cuda` runs on the GPU Spark gave the task)."""
    allow_cpu_fallback: bool = False
    tensor_inputs: tuple[TensorInput, ...] = ()
    """A model that is not tabular: its inputs, each read from its own column (empty for a
    tabular model, which reads its features)."""
    tensor_outputs: tuple[TensorOutput, ...] = ()
    rows_per_run: int = 0
    """1 for a graph whose first dimension is fixed at 1 (each row runs alone); 0: any."""
    scores_output: str | None = None
    """A classifier's scores output, spread into one column per class (tensor layout)."""
    label_from: str | None = None
    """A classifier's class index output, whose labels make the `label` column (tensor layout)."""

    @property
    def input_columns(self) -> list[str]:
        """The columns the model reads, in the order the UDF takes them."""
        if self.tensor_inputs:
            return [i.column for i in self.tensor_inputs]
        return [self.features_column] if self.features_column else list(self.feature_names)

    @property
    def fields(self) -> list[tuple[str, str]]:
        """The struct the UDF returns: (name, Spark SQL type)."""
        if self.tensor_inputs:
            fields = [(o.name, o.spark_type) for o in self.tensor_outputs]
            if self.label_from is not None:
                fields.append((self.label_field, "string"))
            return [*fields, ("error", "string")]
        fields = [
            (name, "bigint" if width == 0 else "array<float>")
            for name, width in zip(self.outputs, self.widths, strict=True)
        ]
        if self.classes is not None and "class_index" in self.outputs:
            fields.append(("label", "string"))
        return [*fields, ("error", "string")]

    @property
    def label_field(self) -> str:
        """The class labels' field: `label`, or `class_label` where an output is called `label`
        (skl2onnx names a classifier's class index so)."""
        return "class_label" if "label" in self.outputs else "label"

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
    """The output columns, in order: each struct field, each class score after the scores, and
    `prediction` after a one-wide `predictions` (tabular). The Spark and the Arrow-file paths
    both use it, so they write the same columns."""
    tensor = bool(spec.tensor_inputs)
    scores = spec.scores_output if tensor else "scores"
    columns: list[OutputColumn] = []
    for name, _ in spec.fields:
        columns.append(OutputColumn(f"{prefix}{safe_name(name) if tensor else name}", name))
        if name == scores and spec.classes is not None:
            columns += [
                OutputColumn(f"{prefix}score_{safe_name(label)}", name, i)
                for i, label in enumerate(spec.classes)
            ]
        if not tensor and name == "predictions" and spec.widths[spec.outputs.index(name)] == 1:
            columns.append(OutputColumn(f"{prefix}prediction", "predictions", 0))
    return columns


def safe_name(label: str) -> str:
    """A name as a column-name suffix (Parquet refuses ' ,;{}()=' and control chars)."""
    return re.sub(r"[\s,;{}()=]+", "_", label).strip("_") or "class"
