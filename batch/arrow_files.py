"""Parquet files in, Parquet files out, with no row passing through the JVM: Spark schedules the
tasks, pyarrow reads and writes inside them.

Why: Spark's own Parquet path turns every row into the JVM's row format, then into Arrow on its
way to Python, and back again on the way out. For a small model that conversion is most of the
work. On 2 cores, Spark copying 2M rows from Parquet to Parquet with no Python at all ran at
2.9M rows/s, while one process with pyarrow read, scored and wrote them at 5M rows/s. Here each
task reads its row groups with pyarrow, scores them with the same worker code as the UDF path
(`score_arrays`, so the same validation and the same columns) and writes one part file.

The files are opened through pyarrow's file systems (`batch.storage`): local paths, and `s3://`,
`gs://`, `hdfs://`, ... stores. On a classic session Spark runs the tasks as an RDD job; Spark
Connect has no RDDs, so there they are a DataFrame job (one row per task, `mapInArrow`). The RDD
job is kept because a cold CLI run's first SQL query (planning, Arrow round trip) made the job
about twice as slow (bench/RESULTS.md).

The job uses this path only where it is safe (`unusable` says why not, otherwise):
- Parquet in and Parquet out, in a store every task can open: a remote one, or the local file
  system with a local master;
- a file, or a flat folder of files with one schema (Hive partition folders keep columns in
  folder names, which only Spark's reader restores);
- column types that pyarrow writes back exactly as Spark reads them (not a Spark ML vector or
  any other user-defined type: Parquet keeps it as a struct that only Spark's reader turns back
  into its type).
Anything else goes through Spark's reader and writer (`score_dataframe`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

import inference
from batch import paths, storage
from batch.scoring import is_connect
from batch.spec import OutputColumn, ScoringSpec, output_layout
from batch.storage import Location
from batch.worker import flatten, model_for, score_arrays

TASK_BYTES = 128 * 1024 * 1024
"""Uncompressed bytes per task at most, as Spark's `spark.sql.files.maxPartitionBytes`."""
BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH_ROWS = 262_144
"""Rows read, scored and written at once (each batch is one output row group): big enough to
amortise the per-batch calls, small enough for memory. On 2M side_effects rows 262,144 ran 9%
faster than 65,536 and as fast as a million."""
SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"
"""Where Spark keeps a Parquet file's Spark schema (user-defined types included)."""


@dataclass(frozen=True)
class Task:
    """One Spark task: row groups of one or more files, written as one part file."""

    index: int
    pieces: tuple[tuple[str, tuple[int, ...]], ...]
    """(file, its row groups to read); no row groups: write an empty part with the schema."""
    batch_rows: int


@dataclass(frozen=True)
class TaskResult:
    rows: int
    bad: int
    first_error: str | None


@dataclass(frozen=True)
class Plan:
    tasks: list[Task]
    rows: int
    schemas: dict[str, pa.Schema]
    """Each file's Arrow schema, from its footer."""
    user_types: tuple[str, ...] = ()
    """Columns that Spark wrote from a user-defined type (a Spark ML vector)."""
    filesystem: pafs.FileSystem | None = None
    """The file system of the files (paths in `tasks` are its paths)."""

    @property
    def schema(self) -> pa.Schema:
        return next(iter(self.schemas.values()))


class UnreadableInput(ValueError):
    """A file in the input is not Parquet (the message names it)."""


def unusable(spark: SparkSession, input_path: str, output_path: str) -> str | None:
    """Why this path cannot score `input_path` into `output_path`; None when it can."""
    local_master = paths.local(spark)
    for path in (input_path, output_path):
        if storage.is_local(path) and not local_master:
            return f"{path} is local and the master is not: executors may not see its files"
    try:
        source = storage.locate(input_path)
        storage.locate(output_path)
    except storage.StorageError as e:
        return str(e)
    if storage.info(source).type == pafs.FileType.Directory and any(
        entry.type == pafs.FileType.Directory for entry in storage.visible(source)
    ):
        return f"{input_path} has sub-folders (partitions): Spark's reader restores their columns"
    return None


def plan(spark: SparkSession, input_path: str) -> Plan:
    """Read every footer (on the driver) and split the row groups into tasks of similar size."""
    root = storage.locate(input_path)
    fs = root.fs
    if storage.info(root).type == pafs.FileType.Directory:
        files = [f.path for f in storage.visible(root)]
    else:
        files = [root.path]
    footers: list[tuple[str, pq.FileMetaData]] = []
    for file in files:
        try:
            footers.append((file, pq.read_metadata(file, filesystem=fs)))
        except (pa.ArrowInvalid, OSError) as e:
            raise UnreadableInput(f"{file} is not a readable Parquet file: {e}") from e
    groups = [
        (path, i, meta.row_group(i).num_rows, meta.row_group(i).total_byte_size)
        for path, meta in footers
        for i in range(meta.num_row_groups)
    ]
    rows = sum(g[2] for g in groups)
    size = sum(g[3] for g in groups)
    batch_rows = max(1024, min(MAX_BATCH_ROWS, BATCH_BYTES * rows // size)) if size else 1024
    schemas = {path: meta.schema.to_arrow_schema().remove_metadata() for path, meta in footers}
    user_types = tuple(sorted({c for _, meta in footers for c in _user_typed(meta)}))
    if not groups:  # no rows at all: one task writes the empty result with its schema
        empty = [Task(0, ((files[0], ()),), batch_rows)] if files else []
        return Plan(empty, 0, schemas, user_types, fs)
    count = min(len(groups), max(paths.parallelism(spark), math.ceil(size / TASK_BYTES)))
    tasks: list[Task] = []
    pieces: dict[str, list[int]] = {}
    done = 0
    for number, (path, index, group_rows, _) in enumerate(groups, 1):
        pieces.setdefault(path, []).append(index)
        done += group_rows
        if done * count >= rows * (len(tasks) + 1) or number == len(groups):
            parts = tuple((p, tuple(i)) for p, i in pieces.items())
            tasks.append(Task(len(tasks), parts, batch_rows))
            pieces = {}
    return Plan(tasks, rows, schemas, user_types, fs)


def _user_typed(meta: pq.FileMetaData) -> list[str]:
    """The columns Spark wrote from a user-defined type, read from the schema it keeps in the
    file's footer."""
    spark_schema = (meta.metadata or {}).get(SPARK_SCHEMA_KEY)
    if spark_schema is None:
        return []
    try:
        fields = json.loads(spark_schema).get("fields", [])
    except (ValueError, AttributeError):
        return []
    return [f["name"] for f in fields if '"udt"' in json.dumps(f.get("type"))]


def check_schema(input_path: str, task_plan: Plan) -> str | None:
    """Why the files' schema rules this path out (mixed schemas, types pyarrow would change)."""
    schemas = set(task_plan.schemas.values())
    if not schemas:
        return f"{input_path} holds no files"
    if len(schemas) > 1:
        return f"the files of {input_path} differ in schema"
    if task_plan.user_types:
        return (
            f"column(s) {', '.join(task_plan.user_types)} hold a Spark ML vector or another "
            "user-defined type, which only Spark's reader restores"
        )
    odd = [f"{f.name} ({f.type})" for f in task_plan.schema if not _plain(f.type)]
    if odd:
        return f"column type(s) {', '.join(odd)} are left to Spark's reader"
    return None


RESULT_SCHEMA = "rows long, bad long, first_error string"


def score_files(
    spark: SparkSession, spec: ScoringSpec, prefix: str, task_plan: Plan, staging: Location
) -> list[TaskResult]:
    """Run the tasks, one per Spark task (an RDD job on a classic session, a DataFrame job on
    Spark Connect, which has no RDDs); each writes `staging/part-NNNNN.snappy.parquet`."""
    staging.fs.create_dir(staging.path)
    tasks = task_plan.tasks
    source = task_plan.filesystem
    if source is None:
        raise ValueError("the plan has no file system")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                done = run_task(spec, prefix, tasks[index], source, staging)
                yield pa.RecordBatch.from_pylist(
                    [{"rows": done.rows, "bad": done.bad, "first_error": done.first_error}],
                    schema=pa.schema(
                        [("rows", pa.int64()), ("bad", pa.int64()), ("first_error", pa.string())]
                    ),
                )

    count = max(1, len(tasks))
    if not is_connect(spark):
        # A classic session runs the tasks as plain RDD work: no SQL query to plan and no
        # Arrow round trip, which made a cold CLI run's job about twice as slow.
        return (
            spark.sparkContext.parallelize(tasks, count)
            .map(lambda task: run_task(spec, prefix, task, source, staging))
            .collect()
        )
    ids = spark.range(0, len(tasks), numPartitions=count)  # one task per partition
    return [
        TaskResult(int(r["rows"]), int(r["bad"]), r["first_error"])
        for r in ids.mapInArrow(run, RESULT_SCHEMA).collect()
    ]


def run_task(
    spec: ScoringSpec, prefix: str, task: Task, source: pafs.FileSystem, folder: Location
) -> TaskResult:
    """The body of one task, in a Spark Python worker. Locally the part is written under a
    hidden name and renamed when complete; in an object store (no rename) under its own name,
    removed again if the task fails (the job then removes the whole staging folder)."""
    model = model_for(spec)
    layout = output_layout(spec, prefix)
    final = folder.child(f"part-{task.index:05d}.snappy.parquet").path
    hidden = folder.child(f".part-{task.index:05d}-{uuid.uuid4().hex}.inprogress").path
    partial = final if folder.remote else hidden
    rows = bad = 0
    first_error: str | None = None
    writer: pq.ParquetWriter | None = None
    try:
        for path, groups in task.pieces:
            parquet = pq.ParquetFile(source.open_input_file(path))
            batches = parquet.iter_batches(task.batch_rows, list(groups), use_threads=False)
            for batch in batches if groups else ():
                scored = _score(spec, model, layout, batch)
                errors = scored.column(-1)
                rows += len(batch)
                if errors.null_count < len(errors):
                    bad += len(errors) - errors.null_count
                    first_error = first_error or errors.drop_null()[0].as_py()
                if writer is None:
                    writer = _writer(folder.fs, partial, scored.schema, parquet, layout)
                writer.write_batch(scored)
        if writer is None:  # no rows: an empty file that still has every column
            parquet = pq.ParquetFile(source.open_input_file(task.pieces[0][0]))
            empty = pa.RecordBatch.from_pylist([], schema=parquet.schema_arrow)
            schema = _score(spec, model, layout, empty).schema
            writer = _writer(folder.fs, partial, schema, parquet, layout)
    except BaseException:
        if writer is not None:
            writer.close()
            folder.fs.delete_file(partial)
        raise
    writer.close()
    if partial != final:
        folder.fs.move(partial, final)
    return TaskResult(rows, bad, first_error)


def _score(
    spec: ScoringSpec, model: inference.Model, layout: list[OutputColumn], batch: pa.RecordBatch
) -> pa.RecordBatch:
    """The batch with the layout's columns appended (the error column last)."""
    struct = score_arrays(spec, model, [batch.column(c) for c in spec.input_columns])
    return pa.RecordBatch.from_arrays(
        [*batch.columns, *flatten(struct, layout)],
        names=[*batch.schema.names, *(column.name for column in layout)],
    )


def _writer(
    fs: pafs.FileSystem,
    path: str,
    schema: pa.Schema,
    source: pq.ParquetFile,
    layout: list[OutputColumn],
) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        path,
        schema,
        filesystem=fs,
        compression="snappy",
        use_dictionary=_dictionary_columns(source, layout),
    )


def _dictionary_columns(source: pq.ParquetFile, layout: list[OutputColumn]) -> list[str]:
    """The columns worth a dictionary: text (input or ours) and the class index. Numbers are
    written plain: a dictionary of distinct numbers overflows, and trying first cost more than
    the rest of the write (measured per million side_effects rows: 120 ms plain, 250 ms with
    dictionaries everywhere)."""
    text = [
        column.path
        for column in (source.schema.column(i) for i in range(len(source.schema)))
        if column.physical_type in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY")
    ]
    ours = [
        c.name for c in layout if c.index is None and c.field in ("label", "class_index", "error")
    ]
    return text + ours


def _plain(kind: pa.DataType) -> bool:
    """A type that Parquet → pyarrow → Parquet keeps exactly as Spark reads it."""
    t = pa.types
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind):
        return _plain(kind.value_type)
    if t.is_struct(kind):
        return all(_plain(field.type) for field in kind)
    if t.is_map(kind):
        return _plain(kind.key_type) and _plain(kind.item_type)
    if t.is_timestamp(kind):
        return kind.unit in ("ms", "us")
    return bool(
        t.is_signed_integer(kind)
        or t.is_float32(kind)
        or t.is_float64(kind)
        or t.is_boolean(kind)
        or t.is_string(kind)
        or t.is_large_string(kind)
        or t.is_binary(kind)
        or t.is_large_binary(kind)
        or t.is_date32(kind)
        or t.is_decimal(kind)
    )
