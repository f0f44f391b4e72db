"""Score a Spark DataFrame with a bundle: every input column kept, the model's outputs added.

    from batch import score_dataframe
    scored = score_dataframe(df, "models/side_effects")        # lazy, like any transformation

The table goes through Python once, in Arrow batches (`mapInArrow`), and comes back with the
output columns added, built in Python from numpy; the SQL function (`batch.sql`) is an Arrow
UDF over the same worker code. A tabular model reads its features (one column each, or one array
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

import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.functions import arrow_udf
from pyspark.sql.pandas.types import to_arrow_type

import inference
from batch.errors import ScoringError
from batch.model_spec import spec_for
from batch.schema import check_input, is_vector
from batch.spec import ScoringSpec, output_layout
from batch.worker import BatchPlan, score_batches, score_record_batches
from inference.runtime import check_provider_names

__all__ = ["ScoringError", "prepare", "score_dataframe", "scored_columns", "scoring_udf"]
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
    """`df` with the outputs of an already `prepare`d spec appended, in one `mapInArrow` pass:
    each Arrow batch goes to Python once and comes back with the output columns added, with no
    struct to unpack and no input rows queued in the JVM to join with the results (what a
    UDF's evaluation costs). A Spark ML vector the model reads travels as an extra array column
    (converted in the JVM), which the batches come back without."""
    types = {f.name: f.dataType for f in df.schema.fields}
    vectors = [c for c in spec.input_columns if is_vector(types[c])]
    hidden = _hidden_names(df.columns, len(vectors))
    source = df.select(
        *[F.col(f"`{c}`") for c in df.columns],
        *[_as_array(c).alias(h) for c, h in zip(vectors, hidden, strict=True)],
    )
    names = source.columns
    arguments = tuple(
        names.index(hidden[vectors.index(c)] if c in vectors else c) for c in spec.input_columns
    )
    layout = output_layout(spec, prefix)
    fields = dict(spec.fields)
    added = [T.StructField(c.name, _column_type(fields[c.field], c.index)) for c in layout]
    schema = T.StructType([*df.schema.fields, *added])
    large = _large_var_types(df.sparkSession)
    plan = BatchPlan(
        spec=spec,
        layout=tuple(layout),
        arguments=arguments,
        kept=len(df.columns),
        names=tuple(schema.fieldNames()),
        types=tuple(to_arrow_type(f.dataType, prefers_large_types=large) for f in added),
    )
    return source.mapInArrow(functools.partial(score_record_batches, plan), schema)


def _as_array(column: str) -> Column:
    """A vector column as an array of doubles, converted in the JVM."""
    from pyspark.ml.functions import vector_to_array  # ~0.3 s to import: only for vectors

    return vector_to_array(F.col(f"`{column}`"))


def _column_type(ddl: str, index: int | None) -> T.DataType:
    """An output column's Spark type: the struct field's, or its elements' for a class score."""
    kind = T._parse_datatype_string(ddl)
    return cast(T.ArrayType, kind).elementType if index is not None else kind


def _hidden_names(columns: list[str], count: int) -> list[str]:
    taken = set(columns)
    names: list[str] = []
    for i in range(count):
        name = f"__bundle_input_{i}__"
        while name in taken:
            name += "_"
        names.append(name)
    return names


def _large_var_types(spark: SparkSession) -> bool:
    """Whether this session's Arrow batches carry large strings and lists (so must ours)."""
    value = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")
    return str(value).lower() == "true"


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
