"""Check, on the driver and before any work, that a table's columns can feed the model: every
column there, of a type that can hold what its input takes. What only the values can tell (a
row's length, a null, NaN) is left to the workers, which report it per row.
"""

from __future__ import annotations

from pyspark.sql import types as T

from batch.columns import missing_column
from batch.errors import ScoringError
from batch.spec import ScoringSpec, TensorInput
from inference.inputs import FLOATS

VECTORS = ("pyspark.ml.linalg", "pyspark.mllib.linalg")
"""The modules of Spark ML's `VectorUDT`s: vectors are converted to arrays of doubles in the JVM
before they reach Python."""


def check_input(schema: T.StructType, spec: ScoringSpec) -> None:
    problem = missing_column(schema.fieldNames(), spec)
    if problem is not None:
        raise ScoringError(problem)
    types = {f.name: f.dataType for f in schema.fields}
    columns = ", ".join(schema.fieldNames())
    if spec.tensor_inputs:
        for info in spec.tensor_inputs:
            _check_tensor(types[info.column], info, columns)
    elif spec.features_column is not None:
        _check_features_column(types[spec.features_column], spec.features_column, columns)
    else:
        _check_features(types, spec.feature_names, columns)


def is_vector(kind: T.DataType) -> bool:
    """By the type's class, not `isinstance`: importing `pyspark.ml` would add ~0.3 s to every
    CLI start, and a schema that holds a vector has imported its module already."""
    kind_class = type(kind)
    return (
        isinstance(kind, T.UserDefinedType)
        and kind_class.__name__ == "VectorUDT"
        and kind_class.__module__ in VECTORS
    )


def _check_tensor(kind: T.DataType, info: TensorInput, columns: str) -> None:
    depth, element = _unwrap(kind)
    rank = len(info.shape)
    if depth not in (rank, 1) and not (depth == 0 and _values(info) == 1):
        raise ScoringError(
            f"column {info.column!r} is {kind.simpleString()}; input {info.name!r} takes "
            f"{_per_row(info)}"
        )
    if depth == 1 < rank and info.shape.count(-1) > 1:
        raise ScoringError(
            f"column {info.column!r} is a flat array, which cannot say the shape of input "
            f"{info.name!r} ({list(info.shape)} per row, -1: any size): give arrays nested "
            f"{rank} deep"
        )
    if not _element_fits(element, info.datatype):
        raise ScoringError(
            f"column {info.column!r} holds {_name(kind, element)} values; input {info.name!r} is "
            f"{info.datatype}, which takes {_takes(info)}"
        )


def _unwrap(kind: T.DataType) -> tuple[int, T.DataType]:
    """How deep arrays nest in a column, and their element type (a vector: 1, double)."""
    if is_vector(kind):
        return 1, T.DoubleType()
    depth = 0
    while isinstance(kind, T.ArrayType):
        depth, kind = depth + 1, kind.elementType
    return depth, kind


def _values(info: TensorInput) -> int:
    """How many values a row holds when the shape is fixed; -1 when it is not."""
    count = 1
    for d in info.shape:
        if d == -1:
            return -1
        count *= d
    return count


def _per_row(info: TensorInput) -> str:
    rank = len(info.shape)
    if rank == 0:
        return "one value per row (a column of numbers, or text for BYTES)"
    if rank == 1:
        return f"an array of shape {list(info.shape)} per row (-1: any size)"
    return (
        f"an array of shape {list(info.shape)} per row (-1: any size): flat, reshaped, or "
        f"nested {rank} deep"
    )


def _element_fits(element: T.DataType, datatype: str) -> bool:
    if datatype == "BYTES":
        return isinstance(element, T.StringType | T.BinaryType)
    if datatype == "BOOL":
        return isinstance(element, T.BooleanType)
    if isinstance(element, T.StringType):  # text of numbers, read per row
        return True
    if datatype in FLOATS:
        return isinstance(element, T.NumericType)
    return isinstance(element, T.IntegralType)


def _takes(info: TensorInput) -> str:
    if info.datatype == "BYTES":
        return "text or binary"
    if info.datatype == "BOOL":
        return "booleans"
    if info.datatype in FLOATS:
        return "numbers"
    return (
        "integers: cast the column, e.g. "
        f"F.col('{info.column}').cast('{'array<' * len(info.shape)}bigint{'>' * len(info.shape)}')"
    )


def _name(kind: T.DataType, element: T.DataType) -> str:
    return "vector (double)" if is_vector(kind) else element.simpleString()


def _check_features_column(kind: T.DataType, column: str, columns: str) -> None:
    vector = is_vector(kind)
    if not vector and not (
        isinstance(kind, T.ArrayType) and isinstance(kind.elementType, T.NumericType)
    ):
        raise ScoringError(
            f"features column {column!r} must be an array of numbers or a vector, "
            f"got {kind.simpleString()}"
        )


def _check_features(
    types: dict[str, T.DataType], feature_names: tuple[str, ...], columns: str
) -> None:
    unusable = [
        f"{f} ({types[f].simpleString()})"
        for f in feature_names
        if not isinstance(types[f], T.NumericType | T.StringType)
    ]
    if unusable:
        raise ScoringError(
            f"feature column(s) must hold numbers (or text of numbers): {', '.join(unusable)}"
        )
