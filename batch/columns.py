"""Whether a table has the columns a model reads, from their names alone (no pyspark), so the CLI
can say so before Spark starts (`batch.preflight`) with the words `batch.schema` uses after."""

from __future__ import annotations

from collections.abc import Sequence

from batch.spec import ScoringSpec, TensorInput


def missing_column(names: Sequence[str], spec: ScoringSpec) -> str | None:
    """Why a table with these column names cannot feed the model; None when every column is
    there (their types are `batch.schema`'s to check)."""
    columns = ", ".join(names)
    present = set(names)
    if spec.tensor_inputs:
        for info in spec.tensor_inputs:
            if info.column not in present:
                return _missing(info, columns)
    elif spec.features_column is not None:
        if spec.features_column not in present:
            return (
                f"features column {spec.features_column!r} is not in the input; columns: {columns}"
            )
    else:
        missing = [f for f in spec.feature_names if f not in present]
        if missing:
            return (
                f"feature column(s) {', '.join(map(repr, missing))} are not in the input; the "
                f"model expects {', '.join(spec.feature_names)}; input columns: {columns}"
            )
    return None


def _missing(info: TensorInput, columns: str) -> str:
    mapping = f"input_columns={{{info.name!r}: '<column>'}} (--input-columns {info.name}=<column>)"
    if info.column == info.name:
        return (
            f"the model's input {info.name!r} reads a column {info.name!r}, which is not in the "
            f"input; name its column with {mapping}; input columns: {columns}"
        )
    return (
        f"column {info.column!r} (for input {info.name!r}) is not in the input; input "
        f"columns: {columns}"
    )
