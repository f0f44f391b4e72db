"""The batch scoring job: read a table, score it, write it atomically, report what happened.

The output is written to a staging folder beside the target and renamed into place only after
every task succeeded, so a failed or interrupted run never leaves a result that looks complete.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.scoring import ScoringError, score_dataframe

log = logging.getLogger("batch")
Format = Literal["parquet", "csv"]


class JobError(Exception):
    """The job cannot run as asked (arguments, input, output); the message says why."""

    exit_code = 2


class BadRowsError(JobError):
    """`--fail-on-bad-rows` found rows that could not be scored."""

    exit_code = 1


@dataclass(frozen=True)
class JobReport:
    output: str
    rows: int
    bad_rows: int
    partitions: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def input_format(path: str, given: str | None) -> Format:
    if given is not None:
        if given not in ("parquet", "csv"):
            raise JobError(f"unknown input format {given!r}; known: parquet, csv")
        return given  # type: ignore[return-value]
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq", "") or Path(path).is_dir():
        return "parquet"
    raise JobError(f"cannot tell the format of {path!r} from its extension; pass --format")


def read_table(spark: SparkSession, path: str, fmt: Format) -> DataFrame:
    if not _filesystem(spark, path).exists(_jpath(spark, path)):
        raise JobError(f"input {path} does not exist")
    if fmt == "csv":
        return spark.read.csv(path, header=True, inferSchema=True)
    return spark.read.parquet(path)


def run(
    spark: SparkSession,
    *,
    model: str,
    input_path: str,
    output_path: str,
    fmt: str | None = None,
    output_format: Format = "parquet",
    mode: Literal["error", "overwrite"] = "error",
    prefix: str = "pred_",
    outputs: list[str] | None = None,
    features_column: str | None = None,
    version: int | None = None,
    fail_on_bad_rows: bool = False,
) -> JobReport:
    start = time.perf_counter()
    fs, target = _filesystem(spark, output_path), _jpath(spark, output_path)
    if fs.exists(target) and mode == "error":
        raise JobError(f"output {output_path} exists; pass --mode overwrite to replace it")
    table = read_table(spark, input_path, input_format(input_path, fmt))
    try:
        scored = score_dataframe(
            table,
            model,
            version=version,
            prefix=prefix,
            outputs=outputs,
            features_column=features_column,
        )
    except ScoringError as e:
        raise JobError(str(e)) from e
    partitions = table.rdd.getNumPartitions()
    log.info("scoring %s with %s: %d partition(s)", input_path, model, partitions)
    if output_format == "csv":  # CSV has no arrays: write them as JSON text
        scored = scored.select(
            *[
                F.to_json(F.col(f"`{f.name}`")).alias(f.name)
                if f.dataType.typeName() == "array"
                else F.col(f"`{f.name}`")
                for f in scored.schema.fields
            ]
        )
    staging = f"{output_path.rstrip('/')}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        scored.write.format(output_format).option("header", "true").save(staging)
        rows, bad = _count(spark, staging, output_format, f"{prefix}error")
        if bad and fail_on_bad_rows:
            raise BadRowsError(
                f"{bad} of {rows} rows could not be scored (--fail-on-bad-rows); "
                f"first: {_first_error(spark, staging, output_format, prefix)}"
            )
        if fs.exists(target):
            fs.delete(target, True)
        if not fs.rename(_jpath(spark, staging), target):
            raise JobError(f"could not move the result from {staging} to {output_path}")
    finally:
        staging_path = _jpath(spark, staging)
        if fs.exists(staging_path):
            fs.delete(staging_path, True)
    report = JobReport(output_path, rows, bad, partitions, time.perf_counter() - start)
    log.info(
        "wrote %d rows (%d bad) to %s in %.1fs (%.0f rows/s)",
        rows,
        bad,
        output_path,
        report.seconds,
        report.rows_per_second,
    )
    return report


def _count(spark: SparkSession, path: str, fmt: str, error_column: str) -> tuple[int, int]:
    """Rows written and rows with an error, in one pass over one column."""
    written = spark.read.format(fmt).option("header", "true").load(path)
    row = written.select(
        F.count(F.lit(1)).alias("rows"), F.count(error_column).alias("bad")
    ).first()
    return (int(row["rows"]), int(row["bad"])) if row else (0, 0)


def _first_error(spark: SparkSession, path: str, fmt: str, prefix: str) -> str:
    written = spark.read.format(fmt).option("header", "true").load(path)
    row = written.where(F.col(f"{prefix}error").isNotNull()).select(f"{prefix}error").first()
    return str(row[0]) if row else ""


def _jpath(spark: SparkSession, path: str):  # type: ignore[no-untyped-def]
    return spark._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]


def _filesystem(spark: SparkSession, path: str):  # type: ignore[no-untyped-def]
    return _jpath(spark, path).getFileSystem(spark._jsc.hadoopConfiguration())
