"""Score a Spark DataFrame with a bundle: every input column kept, the model's outputs added.

    from batch import score_dataframe
    scored = score_dataframe(df, "models/side_effects")        # lazy, like any transformation

Only the feature columns travel to Python (through Arrow, as an iterator UDF); the other
columns stay in the JVM. Output columns, with the default prefix `pred_`:
- classifiers: `pred_label`, `pred_class_index`, `pred_scores` (array, in class order) and one
  `pred_score_<class>` column per class;
- regressors: `pred_predictions` (array) and `pred_prediction` when there is one output;
- featurization (`outputs=["dense_1"]`): `pred_dense_1` (array) per requested layer;
- always `pred_error`: null, or why the row could not be scored (its outputs are null).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import arrow_udf

import inference
from batch.worker import ScoringSpec, output_layout, score_batches, spec_for
from inference.runtime import check_provider_names

STRUCT_COLUMN = "__bundle_outputs__"
_arrow_udf = cast(Any, arrow_udf)  # pyspark's stubs miss the type-hinted form used here
_SHIPPED: dict[tuple[str, str], str] = {}
"""(Spark application, sha256) → shipped folder name: each bundle is shipped once per context."""


class ScoringError(ValueError):
    """The job cannot start: a missing feature column, a name clash, an unusable column type."""


def score_dataframe(
    df: DataFrame,
    model: str | Path,
    *,
    version: int | None = None,
    prefix: str = "pred_",
    outputs: Sequence[str] | None = None,
    features_column: str | None = None,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> DataFrame:
    """`df` with the model's outputs appended (see the module docstring for the columns);
    `providers` as in `inference.RuntimeOptions`, on the executors."""
    spec = prepare(
        df.sparkSession,
        df.schema,
        model,
        version=version,
        prefix=prefix,
        outputs=outputs,
        features_column=features_column,
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    return scored_columns(df, spec, prefix)


def scored_columns(df: DataFrame, spec: ScoringSpec, prefix: str) -> DataFrame:
    """`df` with the outputs of an already `prepare`d spec appended."""
    udf = scoring_udf(spec, len(spec.input_columns))
    scored = df.withColumn(STRUCT_COLUMN, udf(*[F.col(f"`{c}`") for c in spec.input_columns]))
    return scored.select(
        *[F.col(f"`{c}`") for c in df.columns],
        *[col.alias(name) for name, col in output_columns(spec, prefix)],
    )


def prepare(
    spark: SparkSession,
    schema: T.StructType,
    model: str | Path,
    *,
    version: int | None,
    prefix: str,
    outputs: Sequence[str] | None,
    features_column: str | None,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> ScoringSpec:
    """Verify the bundle and check that a table of this schema can be scored: every refusal
    before any work. The providers are checked by name here; whether the executors can start
    them (a GPU driver, the `gpu` extra) only they can tell, and their error names it."""
    check_provider_names(providers)
    bundle = inference.load(model, version=version)
    spec = scoring_spec(
        spark,
        bundle,
        outputs,
        features_column,
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    _check_input(schema, spec)
    names = set(schema.fieldNames())
    clash = sorted(names & {column.name for column in output_layout(spec, prefix)})
    if clash:
        raise ScoringError(
            f"output column(s) {', '.join(clash)} already exist in the input; choose another "
            f"prefix (now {prefix!r})"
        )
    return spec


def scoring_udf(spec: ScoringSpec, arguments: int) -> Any:
    """The scalar-iterator Arrow UDF over `arguments` columns (its type is read from the hints)."""
    if arguments == 1:

        def one(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
            return score_batches(spec, batches)

        return _arrow_udf(one, spec.ddl)

    def many(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        return score_batches(spec, batches)

    return _arrow_udf(many, spec.ddl)


def output_columns(spec: ScoringSpec, prefix: str) -> list[tuple[str, Column]]:
    struct = F.col(STRUCT_COLUMN)
    return [
        (
            column.name,
            struct.getField(column.field)
            if column.index is None
            else struct.getField(column.field)[column.index],
        )
        for column in output_layout(spec, prefix)
    ]


def scoring_spec(
    spark: SparkSession,
    model: inference.Model,
    outputs: Sequence[str] | None,
    features_column: str | None,
    *,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> ScoringSpec:
    known = [o.name for o in model.metadata.outputs]
    unknown = [n for n in outputs or [] if n not in known]
    if unknown:
        raise ScoringError(f"unknown output(s) {unknown}; the model has: {', '.join(known)}")
    return spec_for(
        model,
        outputs,
        features_column,
        shipped_name=ship(spark, model.path, model.metadata.onnx.sha256),
        threads=int(spark.conf.get("spark.task.cpus", "1") or 1),
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )


def ship(spark: SparkSession, bundle_dir: Path, sha256: str) -> str:
    """Send the bundle folder to every executor once (`SparkFiles`), under a unique name."""
    key = (spark.sparkContext.applicationId, sha256)
    if key not in _SHIPPED:
        name = f"bundle-{sha256[:16]}"
        staging = Path(tempfile.mkdtemp(prefix="bundle-ship-")) / name
        shutil.copytree(bundle_dir, staging, ignore=shutil.ignore_patterns("*.png"))
        spark.sparkContext.addFile(str(staging), recursive=True)
        _SHIPPED[key] = name
    return _SHIPPED[key]


def _check_input(schema: T.StructType, spec: ScoringSpec) -> None:
    types = {f.name: f.dataType for f in schema.fields}
    columns = ", ".join(schema.fieldNames())
    if spec.features_column is not None:
        kind = types.get(spec.features_column)
        if kind is None:
            raise ScoringError(
                f"features column {spec.features_column!r} is not in the input; columns: {columns}"
            )
        if not (isinstance(kind, T.ArrayType) and _numeric(kind.elementType)):
            raise ScoringError(
                f"features column {spec.features_column!r} must be an array of numbers, "
                f"got {kind.simpleString()}"
            )
        return
    missing = [f for f in spec.feature_names if f not in types]
    if missing:
        raise ScoringError(
            f"feature column(s) {', '.join(map(repr, missing))} are not in the input; the model "
            f"expects {', '.join(spec.feature_names)}; input columns: {columns}"
        )
    unusable = [
        f"{f} ({types[f].simpleString()})"
        for f in spec.feature_names
        if not (_numeric(types[f]) or isinstance(types[f], T.StringType))
    ]
    if unusable:
        raise ScoringError(
            f"feature column(s) must hold numbers (or text of numbers): {', '.join(unusable)}"
        )


def _numeric(kind: T.DataType) -> bool:
    return isinstance(kind, T.NumericType)
