"""The batch scoring job: read a table, score it, write it atomically, report what happened.

The output is written to a staging folder beside the target and put in place only after every
task succeeded (renamed, or in an object store copied with `_SUCCESS` last: `batch.storage`), so
a failed or interrupted run never leaves a result that looks complete. The job uses the Spark
session's own API only (no `sparkContext`, `_jvm` or `.rdd`), so it runs on classic Spark and
on Spark Connect alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from batch import arrow_files, paths, preflight, storage
from batch.errors import BadRowsError, JobError
from batch.scoring import ScoringError, prepare, scored_columns
from batch.staging import staging_path as new_staging
from batch.storage import Location
from batch.worker import ScoringSpec

log = logging.getLogger("batch")
Format = Literal["parquet", "csv"]
IO = Literal["auto", "arrow", "spark"]
"""Who reads and writes the files: pyarrow in Spark's tasks (`batch.arrow_files`), or Spark."""


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
    return preflight.input_format(path, given)  # type: ignore[return-value]


CSV_OPTIONS = {
    "header": "true",
    "multiLine": "true",
    "quote": '"',
    "escape": '"',
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
}
"""RFC 4180 as Spark reads and writes it: a header line, fields quoted with a double quote where
needed, a quote inside a field doubled, line breaks inside quoted fields. Spark's default escape
is a backslash, which leaves doubled quotes doubled; without `multiLine` a quoted line break
splits the row in two; Spark's writer trims spaces and line breaks around a value unless told
not to. A multi-line CSV file is read by one task: Spark cannot split it."""


def read_table(spark: SparkSession, path: str, fmt: Format) -> DataFrame:
    with spark_reaches(path):
        if fmt == "csv":
            return spark.read.options(**CSV_OPTIONS).csv(path, inferSchema=True)
        return spark.read.parquet(path)


_NO_CONNECTOR = ("No FileSystem for scheme", "S3AFileSystem not found", "fs.s3a.S3AFileSystem")


@contextmanager
def spark_reaches(path: str) -> Iterator[None]:
    """Spark's own reader or writer on `path`: a store whose Hadoop connector is not on Spark's
    classpath (s3:// or s3a:// without hadoop-aws) is one line saying so, not a Java trace."""
    try:
        yield
    except Exception as e:
        text = str(getattr(e, "java_exception", "") or "") + str(e)
        if storage.is_local(path) or not any(k in text for k in _NO_CONNECTOR):
            raise
        scheme = path.split(":", 1)[0]
        raise JobError(
            f"Spark's own reader and writer cannot open {path}: no Hadoop file system for "
            f"{scheme}:// on Spark's classpath. Spark reads S3 as s3a:// with the hadoop-aws "
            "jars (e.g. --packages org.apache.hadoop:hadoop-aws:<Hadoop version>); Parquet in "
            "and out needs neither: leave it to pyarrow (--io auto or arrow)"
        ) from e


def _read_written(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    return spark.read.format(fmt).options(**(CSV_OPTIONS if fmt == "csv" else {})).load(path)


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
    input_columns: Mapping[str, str] | None = None,
    version: int | None = None,
    fail_on_bad_rows: bool = False,
    io: IO = "auto",
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> JobReport:
    start = time.perf_counter()
    target = storage.locate(output_path)
    in_format = input_format(input_path, fmt)
    _check_paths(spark, input_path, output_path, mode)
    log.info("scoring %s with %s", input_path, model)
    task_plan = _arrow_plan(
        spark,
        io,
        in_format=in_format,
        output_format=output_format,
        input_path=input_path,
        output_path=output_path,
    )
    if task_plan is None:
        table = read_table(spark, for_spark(storage.locate(input_path)), in_format)
        schema = table.schema
    else:  # validated from the footers: Spark's reader is not needed at all
        schema = from_arrow_schema(task_plan.schema)
    try:
        spec = prepare(
            spark,
            schema,
            model,
            version=version,
            prefix=prefix,
            outputs=outputs,
            features_column=features_column,
            input_columns=input_columns,
            providers=providers,
            allow_cpu_fallback=allow_cpu_fallback,
        )
    except ScoringError as e:
        raise JobError(str(e)) from e
    staging = storage.locate(new_staging(output_path))
    try:
        if task_plan is None:
            written = _write_spark(
                spark, table, spec, prefix=prefix, output_format=output_format, staging=staging
            )
        else:
            log.info(
                "%d rows in %d task(s); pyarrow reads and writes the Parquet files",
                task_plan.rows,
                len(task_plan.tasks),
            )
            written = _write_arrow(spark, spec, prefix, task_plan, staging)
        if written.bad and fail_on_bad_rows:
            raise BadRowsError(
                f"{written.bad} of {written.rows} rows could not be scored (--fail-on-bad-rows); "
                f"first: {written.first_error()}"
            )
        storage.commit(staging, target)
    except Exception:
        _discard(staging)
        raise
    except BaseException:  # SIGTERM or Ctrl-C, maybe inside a py4j call
        _in_a_new_thread(lambda: _cancel_and_discard(spark, staging))
        raise
    report = JobReport(
        output_path, written.rows, written.bad, written.tasks, time.perf_counter() - start
    )
    log.info(
        "wrote %d rows (%d bad) to %s in %.1fs (%.0f rows/s)",
        report.rows,
        report.bad_rows,
        output_path,
        report.seconds,
        report.rows_per_second,
    )
    return report


def _discard(staging: Location) -> None:
    """Remove the staging folder (after a failure; after success it was moved away)."""
    try:
        storage.delete(staging)
    except storage.StorageError as e:
        log.warning("could not remove the staging folder %s: %s", staging.uri, e)


def _cancel_and_discard(spark: SparkSession, staging: Location) -> None:
    """Stop this session's Spark jobs, wait until none runs (so none writes again), then remove
    the staging folder. `interruptAll` answers the operations it interrupted: none once every
    job has stopped."""
    deadline = time.monotonic() + 60
    while spark.interruptAll() and time.monotonic() < deadline:
        time.sleep(0.2)
    _discard(staging)


def _in_a_new_thread(work: Callable[[], None]) -> None:
    """Run `work` on a thread of its own: py4j gives each thread its own connection, and the
    main thread's was cut mid-answer by the interrupt (any call on it reads a stale reply)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except Exception as e:  # reported, never raised over the interrupt being handled
            errors.append(e)

    thread = threading.Thread(target=target, name="batch-cleanup", daemon=True)
    thread.start()
    thread.join()
    if errors:
        log.warning("could not remove the staging folder: %s", str(errors[0]).splitlines()[0])


@dataclass(frozen=True)
class Written:
    rows: int
    bad: int
    tasks: int
    first_error: Callable[[], str]
    """The first bad row's message (read back only when asked)."""


def _arrow_plan(
    spark: SparkSession,
    io: IO,
    *,
    in_format: Format,
    output_format: Format,
    input_path: str,
    output_path: str,
) -> arrow_files.Plan | None:
    """The Arrow-file plan when that path can run the job (see `batch.arrow_files`)."""
    if io == "spark":
        return None
    why_not: str | None = None
    task_plan: arrow_files.Plan | None = None
    if in_format != "parquet" or output_format != "parquet":
        why_not = "CSV is read and written by Spark"
    else:
        why_not = arrow_files.unusable(spark, input_path, output_path)
    if why_not is None:
        try:
            task_plan = arrow_files.plan(spark, input_path)
        except arrow_files.UnreadableInput as e:
            raise JobError(str(e)) from e
        why_not = arrow_files.check_schema(input_path, task_plan)
    if why_not is None:
        return task_plan
    if io == "arrow":
        raise JobError(f"--io arrow cannot run this job: {why_not}")
    log.info("Spark reads and writes the files: %s", why_not)
    return None


def _write_arrow(
    spark: SparkSession,
    spec: ScoringSpec,
    prefix: str,
    task_plan: arrow_files.Plan,
    staging: Location,
) -> Written:
    results = arrow_files.score_files(spark, spec, prefix, task_plan, staging)
    storage.mark_success(staging)
    errors = [r.first_error for r in results if r.first_error is not None]
    return Written(
        sum(r.rows for r in results),
        sum(r.bad for r in results),
        len(results),
        lambda: errors[0] if errors else "",
    )


def _write_spark(
    spark: SparkSession,
    table: DataFrame,
    spec: ScoringSpec,
    *,
    prefix: str,
    output_format: Format,
    staging: Location,
) -> Written:
    scored = scored_columns(table, spec, prefix)
    log.info("scoring through Spark SQL")
    if output_format == "csv":  # CSV has no arrays: write them as JSON text
        scored = scored.select(
            *[
                F.to_json(F.col(f"`{f.name}`")).alias(f.name)
                if f.dataType.typeName() == "array"
                else F.col(f"`{f.name}`")
                for f in scored.schema.fields
            ]
        )
    options = CSV_OPTIONS if output_format == "csv" else {}
    where = for_spark(staging)
    with spark_reaches(where):
        scored.write.format(output_format).options(**options).save(where)
    parts = [f for f in storage.visible(staging) if f.base_name.startswith("part-")]
    rows, bad = _count(spark, where, output_format, f"{prefix}error")
    return Written(rows, bad, len(parts), lambda: _first_error(spark, where, output_format, prefix))


def for_spark(location: Location) -> str:
    """How Spark is told a path: a local one absolute (a Connect server may run elsewhere in
    the file system), a store's URI as given."""
    return location.uri if location.remote else location.path


def _count(spark: SparkSession, path: str, fmt: str, error_column: str) -> tuple[int, int]:
    """Rows written and rows with an error, in one pass over one column."""
    written = _read_written(spark, path, fmt)
    row = written.select(
        F.count(F.lit(1)).alias("rows"), F.count(error_column).alias("bad")
    ).first()
    return (int(row["rows"]), int(row["bad"])) if row else (0, 0)


def _first_error(spark: SparkSession, path: str, fmt: str, prefix: str) -> str:
    written = _read_written(spark, path, fmt)
    row = written.where(F.col(f"{prefix}error").isNotNull()).select(f"{prefix}error").first()
    return str(row[0]) if row else ""


def _check_paths(spark: SparkSession, input_path: str, output_path: str, mode: str) -> None:
    """Refuse, before any work: an output that exists (unless overwriting), a missing input, and
    an output that is the input, holds it or lies inside it (overwriting would delete it), as
    the file systems resolve them (symlinks and `..` for local paths, normalised URIs for
    stores); on this machine also an input that cannot be read, an output that cannot be
    written, a live run writing the same output (and stale staging of dead runs is removed):
    `batch.preflight`, as the CLI does before Spark starts."""
    preflight.check_paths(input_path, output_path, mode, local=paths.local(spark))
    if storage.exists(storage.locate(output_path)) and mode == "error":
        raise JobError(f"output {output_path} exists; pass --mode overwrite to replace it")
    if not storage.exists(storage.locate(input_path)):
        raise JobError(f"input {input_path} does not exist")
