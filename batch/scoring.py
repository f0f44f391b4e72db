"""Score a Spark DataFrame with a bundle: every input column kept, the model's outputs added.

    from batch import score_dataframe
    scored = score_dataframe(df, "models/side_effects")        # lazy, like any transformation

Only the model's input columns travel to Python (through Arrow, as an iterator UDF); the other
columns stay in the JVM. A tabular model reads its features (one column each, or one array
column); its output columns, with the default prefix `pred_`:
- classifiers: `pred_label`, `pred_class_index`, `pred_scores` (array, in class order) and one
  `pred_score_<class>` column per class;
- regressors: `pred_predictions` (array) and `pred_prediction` when there is one output;
- featurization (`outputs=["dense_1"]`): `pred_dense_1` (array) per requested layer;
- always `pred_error`: null, or why the row could not be scored (its outputs are null).
Any other model (images, tokens, several inputs) reads one column per input, an array per row
(flat or nested) or a Spark ML vector, and writes one column per output, `pred_<output>`, as
nested arrays of the output's per-row rank (docs/batch-tensors.md):

    score_dataframe(df, "models/digits_cnn", input_columns={"image": "pixels"})
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import arrow_udf

import inference
from batch.errors import ScoringError
from batch.model_spec import spec_for
from batch.schema import check_input, is_vector
from batch.spec import ScoringSpec, output_layout
from batch.worker import score_batches
from inference.runtime import check_provider_names

__all__ = ["ScoringError", "prepare", "score_dataframe", "scored_columns", "scoring_udf"]
STRUCT_COLUMN = "__bundle_outputs__"
COLUMNAR_INPUT = "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled"
log = logging.getLogger("batch")
_arrow_udf = cast(Any, arrow_udf)  # pyspark's stubs miss the type-hinted form used here
_SHIPPED: dict[tuple[str, str], str] = {}
"""(Spark application, sha256) → shipped folder name: each bundle is shipped once per context."""


def score_dataframe(
    df: DataFrame,
    model: str | Path,
    *,
    version: int | None = None,
    prefix: str = "pred_",
    outputs: Sequence[str] | None = None,
    features_column: str | None = None,
    input_columns: Mapping[str, str] | None = None,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> DataFrame:
    """`df` with the model's outputs appended (see the module docstring for the columns);
    `input_columns` maps a model input to the column that holds it (by default, the column
    named like the input); `providers` as in `inference.RuntimeOptions`, on the executors."""
    spec = prepare(
        df.sparkSession,
        df.schema,
        model,
        version=version,
        prefix=prefix,
        outputs=outputs,
        features_column=features_column,
        input_columns=input_columns,
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    return scored_columns(df, spec, prefix)


def scored_columns(df: DataFrame, spec: ScoringSpec, prefix: str) -> DataFrame:
    """`df` with the outputs of an already `prepare`d spec appended."""
    udf = scoring_udf(spec, len(spec.input_columns))
    _allow_user_types(df.sparkSession, df.schema)
    types = {f.name: f.dataType for f in df.schema.fields}
    arguments = [_argument(c, types[c]) for c in spec.input_columns]
    scored = df.withColumn(STRUCT_COLUMN, udf(*arguments))
    return scored.select(
        *[F.col(f"`{c}`") for c in df.columns],
        *[col.alias(name) for name, col in output_columns(spec, prefix)],
    )


def _allow_user_types(spark: SparkSession, schema: T.StructType) -> None:
    """Spark 4.3 hands a columnar scan (Parquet) straight to Arrow UDFs, and that shortcut
    fails on a user-defined type (a Spark ML vector) anywhere in the table, even in a column
    the UDF never reads ([UNSUPPORTED_DATATYPE]). For such a table it is turned off, in this
    session; other tables keep it."""
    if not any(_user_typed(f.dataType) for f in schema.fields):
        return
    log.info("%s=false: the table holds a Spark ML vector (user-defined type)", COLUMNAR_INPUT)
    spark.conf.set(COLUMNAR_INPUT, "false")


def _user_typed(kind: T.DataType) -> bool:
    if isinstance(kind, T.UserDefinedType):
        return True
    if isinstance(kind, T.ArrayType):
        return _user_typed(kind.elementType)
    if isinstance(kind, T.MapType):
        return _user_typed(kind.keyType) or _user_typed(kind.valueType)
    if isinstance(kind, T.StructType):
        return any(_user_typed(f.dataType) for f in kind.fields)
    return False


def _argument(name: str, kind: T.DataType) -> Column:
    """A column as the UDF takes it: a Spark ML vector becomes an array of doubles in the JVM,
    so Python only ever sees arrays."""
    column = F.col(f"`{name}`")
    return vector_to_array(column) if is_vector(kind) else column


def prepare(
    spark: SparkSession,
    schema: T.StructType,
    model: str | Path,
    *,
    version: int | None,
    prefix: str,
    outputs: Sequence[str] | None,
    features_column: str | None,
    input_columns: Mapping[str, str] | None = None,
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
        input_columns=input_columns,
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )
    check_input(schema, spec)
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
    input_columns: Mapping[str, str] | None = None,
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
        input_columns=input_columns,
        shipped_name=ship(spark, model.path, model.metadata.onnx.sha256),
        threads=int(spark.conf.get("spark.task.cpus", "1") or 1),
        providers=providers,
        allow_cpu_fallback=allow_cpu_fallback,
    )


def ship(spark: SparkSession, bundle_dir: Path, sha256: str) -> str:
    """Send the bundle folder to every executor once, under a unique name that `SparkFiles.get`
    finds there: with `SparkContext.addFile` on a classic session, and as an archive through
    `addArtifacts` on a Spark Connect session (which has no SparkContext; the executors
    unpack it into a folder of the archive's name)."""
    remote = is_connect(spark)
    key = (spark.session_id if remote else spark.sparkContext.applicationId, sha256)  # type: ignore[attr-defined]
    if key not in _SHIPPED:
        name = f"bundle-{sha256[:16]}"
        staging = Path(tempfile.mkdtemp(prefix="bundle-ship-")) / name
        shutil.copytree(bundle_dir, staging, ignore=shutil.ignore_patterns("*.png", "*.npz"))
        if remote:
            archive = shutil.make_archive(str(staging), "zip", staging)
            spark.addArtifacts(archive, archive=True)
            name = Path(archive).name
        else:
            spark.sparkContext.addFile(str(staging), recursive=True)
        _SHIPPED[key] = name
    return _SHIPPED[key]


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session (a client of a remote server) rather than a classic one."""
    return type(spark).__module__.startswith("pyspark.sql.connect")
