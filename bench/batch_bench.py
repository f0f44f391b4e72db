"""Batch benchmark: our Spark paths against the single-process floor and Spark's alternatives,
on a classic session and on a Spark Connect session, in one run.

    make bench-batch    # or: .venv/bin/python bench/batch_bench.py --rows 2000000 --repeats 3

On the same Parquet data, with Spark `local[2]` (one warm session of each kind, Arrow batches of
10,000 rows):
- the floor: one process, pyarrow read → onnxruntime in large batches (1 thread) → Parquet;
- our job (`batch.job.run`, what `python -m batch score` runs: here pyarrow reads and writes the
  files inside Spark's tasks), classic only;
- our DataFrame path (`score_dataframe` → Spark's Parquet writer: what the Transformer and
  `--io spark` use);
- `pyspark.ml.functions.predict_batch_udf` with the same onnxruntime session;
- a row-at-a-time Python UDF (Arrow-batched by Spark 4, one row per `session.run`);
- the same two DataFrame paths into Spark's `noop` sink (no writer: the scoring alone);
- the ceilings of Spark's own path: the table copied by Spark's reader and writer with no
  Python, passed through an identity `mapInArrow` (no model) on its way, and passed through a
  `mapInArrow` that appends our output columns (real outputs, scored once) without the model.
Models: `side_effects` (1 feature) and a wide 256 → 1024 → 1024 → 10 model, its features as 256
columns and as one array column. The Connect session (`SparkSession.builder.remote("local[2]")`,
the pyspark wheel's local server) runs in a process of its own after the classic one, with its own
floor in the same rounds. Also the whole CLI run (`python -m batch score`, Spark start included)
on the tiny data. Results replace the batch section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import inference
from batch import job, score_dataframe
from batch.session import ARROW_BATCH_ROWS, spark_session
from bench.common import ROOT, machine, write_section
from bench.models import WIDE_FEATURES, make_wide_bundle

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

Runner = Callable[[str, str], None]
Results = dict[tuple[str, str, str], dict[str, float]]
"""(session kind, data, path) → cold and warm rows/s."""


def make_data(folder: Path, rows: int, wide_rows: int) -> dict[str, Path]:
    """Eight row groups per file, so that Spark reads each file in several tasks."""
    rng = np.random.default_rng(0)
    tiny = folder / "tiny.parquet"
    groups = {"row_group_size": max(1, rows // 8)}
    pq.write_table(
        pa.table({"id": np.arange(rows), "age": rng.integers(13, 101, rows).astype(float)}),
        tiny,
        **groups,
    )
    x = rng.normal(size=(wide_rows, WIDE_FEATURES)).astype(np.float32)
    columns = folder / "wide_columns.parquet"
    pq.write_table(
        pa.table({"id": np.arange(wide_rows), **{f"f{i}": x[:, i] for i in range(WIDE_FEATURES)}}),
        columns,
        row_group_size=max(1, wide_rows // 8),
    )
    array = folder / "wide_array.parquet"
    values = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), WIDE_FEATURES).cast(
        pa.list_(pa.float32())
    )
    pq.write_table(
        pa.table({"id": np.arange(wide_rows), "x": values}),
        array,
        row_group_size=max(1, wide_rows // 8),
    )
    return {"tiny": tiny, "wide_columns": columns, "wide_array": array}


def floor(bundle: Path, source: Path, out: Path, features_column: str | None) -> None:
    """One process, no Spark: the fastest this machine scores Parquet to Parquet."""
    model = inference.load(bundle, options=inference.RuntimeOptions(intra_op_threads=1))
    table = pq.read_table(source)
    if features_column:
        column = table.column(features_column).combine_chunks()
        matrix = column.flatten().to_numpy().reshape(len(table), -1)
    else:
        matrix = np.column_stack(
            [table.column(n).to_numpy() for n in model.metadata.feature_names]
        ).astype(np.float32)
    scores = np.concatenate(
        [model.run(matrix[i : i + 65536]).scores for i in range(0, len(matrix), 65536)]
    )
    k = scores.shape[1]
    scored = table.append_column(
        "pred_scores",
        pa.ListArray.from_arrays(
            pa.array(np.arange(0, len(scores) * k + 1, k, dtype=np.int32)), pa.array(scores.ravel())
        ),
    )
    pq.write_table(scored, out)


JOB = "our job"
OURS = "our DataFrame path"
PBU = "predict_batch_udf"
ROW_UDF = "row-at-a-time UDF"
FLOOR = "floor (1 process, 1 thread)"
PATHS = (
    JOB,
    OURS,
    PBU,
    ROW_UDF,
    f"{OURS}, no writer",
    f"{PBU}, no writer",
    "Parquet copy, no Python",
    "mapInArrow passthrough",
    "mapInArrow + our columns, no model",
)


def spark_runners(spark, bundle: Path, features_column: str | None) -> dict[str, Runner]:  # type: ignore[no-untyped-def]
    """Every Spark path, by name; on a Connect session all but the job (its CLI's concern)."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.types import ArrayType, FloatType

    from batch.scoring import is_connect

    meta = inference.load(bundle).metadata
    names = meta.feature_names

    def ours(source: str) -> DataFrame:
        return score_dataframe(spark.read.parquet(source), bundle, features_column=features_column)

    def make_predict_fn():  # type: ignore[no-untyped-def]
        model = inference.load(bundle, options=inference.RuntimeOptions(intra_op_threads=1))
        return lambda x: model.run(np.asarray(x, np.float32).reshape(len(x), -1)).scores

    predict = predict_batch_udf(
        make_predict_fn,
        return_type=ArrayType(FloatType()),
        batch_size=10_000,
        input_tensor_shapes=[[len(names)]],
    )

    def with_predict_batch_udf(source: str) -> DataFrame:
        df = spark.read.parquet(source)
        features = (
            F.col(features_column) if features_column else F.array(*[F.col(n) for n in names])
        )
        return df.withColumn("pred_scores", predict(features))

    cache: dict[str, inference.Model] = {}

    @F.udf(returnType=ArrayType(FloatType()))
    def one_row(*values):  # type: ignore[no-untyped-def]
        if "m" not in cache:
            cache["m"] = inference.load(
                bundle, options=inference.RuntimeOptions(intra_op_threads=1)
            )
        row = values[0] if features_column else values
        return cache["m"].run(np.asarray([row], np.float32)).scores[0].tolist()

    def row_at_a_time(source: str) -> DataFrame:
        df = spark.read.parquet(source)
        args = [F.col(features_column)] if features_column else [F.col(n) for n in names]
        return df.withColumn("pred_scores", one_row(*args))

    def passthrough(source: str) -> DataFrame:
        df = spark.read.parquet(source)
        return df.mapInArrow(lambda batches: batches, df.schema)

    templates: dict[str, tuple[pa.RecordBatch, T.StructType]] = {}

    def our_columns(source: str) -> DataFrame:
        """Each batch comes back with our output columns (the real outputs of the table's
        first rows, scored once, untimed after the first run) and no model run: the ceiling
        of any path that writes what ours writes through Spark's engine."""
        df = spark.read.parquet(source)
        if source not in templates:
            scored = score_dataframe(
                df.limit(ARROW_BATCH_ROWS), bundle, features_column=features_column
            )
            first = scored.toArrow().combine_chunks()
            added = first.select(scored.columns[len(df.columns) :]).to_batches()[0]
            templates[source] = added, scored.schema
        added, schema = templates[source]

        def with_columns(batches):  # type: ignore[no-untyped-def]
            for batch in batches:
                tail = added.slice(0, batch.num_rows)  # batches hold ≤ ARROW_BATCH_ROWS rows
                yield pa.RecordBatch.from_arrays([*batch.columns, *tail.columns], schema.names)

        return df.mapInArrow(with_columns, schema)

    def job_run(source: str, out: str) -> None:
        job.run(
            spark,
            model=str(bundle),
            input_path=source,
            output_path=out,
            features_column=features_column,
        )

    def parquet(make: Callable[[str], DataFrame]) -> Runner:
        return lambda source, out: make(source).write.parquet(out)

    def no_writer(make: Callable[[str], DataFrame]) -> Runner:
        return lambda source, _: make(source).write.format("noop").mode("overwrite").save()

    runners: dict[str, Runner] = {} if is_connect(spark) else {JOB: job_run}
    return {
        **runners,
        OURS: parquet(ours),
        PBU: parquet(with_predict_batch_udf),
        ROW_UDF: parquet(row_at_a_time),
        f"{OURS}, no writer": no_writer(ours),
        f"{PBU}, no writer": no_writer(with_predict_batch_udf),
        "Parquet copy, no Python": parquet(spark.read.parquet),
        "mapInArrow passthrough": parquet(passthrough),
        "mapInArrow + our columns, no model": parquet(our_columns),
    }


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--wide-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3, help="warm rounds (median)")
    parser.add_argument(
        "--without", default="", help=f"paths to leave out, comma-separated, of: {', '.join(PATHS)}"
    )
    parser.add_argument("--sessions", default="classic,connect", help="classic, connect or both")
    parser.add_argument("--connect-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.connect_worker is not None:  # the Connect phase, in a process of its own
        plan = json.loads(args.connect_worker.read_text())
        print(json.dumps(connect_phase(plan)))
        return
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    load = os.getloadavg()[0]
    try:
        results, cli_seconds = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads = (load, os.getloadavg()[0])
    command = (
        f"python bench/batch_bench.py --rows {args.rows} --wide-rows {args.wide_rows} "
        f"--repeats {args.repeats}"
        + (f" --without '{args.without}'" if args.without else "")
        + (f" --sessions {args.sessions}" if args.sessions != "classic,connect" else "")
    )
    write_section("batch", report(results, cli_seconds, command, args, loads))


def run(work: Path, args: argparse.Namespace) -> tuple[Results, list[float]]:
    data = make_data(work, args.rows, args.wide_rows)
    wide = make_wide_bundle(work / "models" / "wide")
    tiny = ROOT / "models" / "side_effects"
    plan = {
        "work": str(work),
        "repeats": args.repeats,
        "paths": [p for p in PATHS if p not in args.without.split(",")],
        "cases": [
            ["side_effects, 1 column", str(tiny), str(data["tiny"]), None, args.rows],
            ["wide, 256 columns", str(wide), str(data["wide_columns"]), None, args.wide_rows],
            ["wide, one array column", str(wide), str(data["wide_array"]), "x", args.wide_rows],
        ],
    }
    sessions = args.sessions.split(",")
    results: Results = {}
    if "classic" in sessions:
        spark = spark_session("local[2]", app_name="batch-bench")
        for (data_name, path), speed in measure_cases(spark, plan, "classic").items():
            results[("classic", data_name, path)] = speed
        spark.stop()
    if "connect" in sessions:
        for key, speed in run_connect(work, plan).items():
            results[("Connect", *key)] = speed
    return results, cli_runs(tiny, data["tiny"], work, args.repeats)


def cli_runs(model: Path, source: Path, work: Path, repeats: int) -> list[float]:
    """Wall seconds of `python -m batch score` (Spark start included), one fresh process a run."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    seconds = []
    for i in range(repeats):
        out = work / f"cli-out-{i}"
        cli = [sys.executable, "-m", "batch", "score", "--model", str(model)]
        cli += ["--input", str(source), "--output", str(out)]
        options = {"cwd": ROOT, "env": env, "check": True, "capture_output": True}
        seconds.append(timed(functools.partial(subprocess.run, cli, **options)))
        shutil.rmtree(out, ignore_errors=True)
    return seconds


def measure_cases(spark, plan: dict, label: str) -> dict[tuple[str, str], dict[str, float]]:  # type: ignore[no-untyped-def,type-arg]
    """Every case on one session: the floor and the Spark paths, round by round."""
    work = Path(plan["work"])
    counter = iter(range(100_000))

    def out() -> str:
        return str(work / f"out-{label}-{next(counter)}")

    results = {}
    for name, bundle, source, column, rows in plan["cases"]:
        runners: dict[str, Callable[[], None]] = {
            FLOOR: lambda b=bundle, s=source, c=column: floor(Path(b), Path(s), Path(out()), c),
        }
        for path, runner in spark_runners(spark, Path(bundle), column).items():
            if path in plan["paths"]:
                runners[path] = lambda r=runner, s=source: r(s, out())
        for path, speed in _measure(runners, rows, plan["repeats"]).items():
            results[(name, path)] = speed
            print(f"{label:<8} {name:<24} {path:<36} {speed}", file=sys.stderr, flush=True)
        for old in work.glob(f"out-{label}-*"):  # keep the disk free between cases
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    return results


def run_connect(work: Path, plan: dict) -> dict[tuple[str, str], dict[str, float]]:  # type: ignore[type-arg]
    """The Connect phase in a process of its own (a classic session and a local Connect server
    cannot share one)."""
    spec = work / "connect-plan.json"
    spec.write_text(json.dumps(plan))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--connect-worker", str(spec)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return {(data, path): speed for data, path, speed in rows}


def connect_phase(plan: dict) -> list[tuple[str, str, dict[str, float]]]:  # type: ignore[type-arg]
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.remote("local[2]")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
        .getOrCreate()
    )
    try:
        return [(d, p, speed) for (d, p), speed in measure_cases(spark, plan, "connect").items()]
    finally:
        spark.stop()


def _measure(
    runners: dict[str, Callable[[], None]], rows: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Cold: each path's first run (the floor has none). Warm: `repeats` rounds that take the
    paths in turn, so that a machine whose speed drifts (a shared VM) slows them all alike;
    the median per path."""
    cold = {path: timed(run) for path, run in runners.items()}
    warm: dict[str, list[float]] = {path: [] for path in runners}
    for _ in range(repeats):
        for path, run in runners.items():
            warm[path].append(timed(run))
    return {
        path: {
            "cold": float("nan") if path == FLOOR else rows / cold[path],
            "warm": rows / statistics.median(warm[path]),
        }
        for path in runners
    }


def report(
    results: Results,
    cli_seconds: list[float],
    command: str,
    args: argparse.Namespace,
    loads: tuple[float, float],
) -> str:
    lines = [
        "| session | data | path | warm rows/s | vs floor | vs predict_batch_udf | cold rows/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (session, data, path), speed in results.items():
        base = results[(session, data, FLOOR)]["warm"]
        like = f"{PBU}, no writer" if path.endswith(", no writer") else PBU  # same sink
        pbu = results.get((session, data, like), {}).get("warm", float("nan"))
        cold = "" if np.isnan(speed["cold"]) else f"{speed['cold']:,.0f}"
        lines.append(
            f"| {session} | {data} | {path} | {speed['warm']:,.0f} | {speed['warm'] / base:.2f}× "
            f"| {speed['warm'] / pbu:.2f}× | {cold} |"
        )
    return f"""## Batch (Spark)

`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {machine()}, load average (1 min)
{loads[0]:.1f} at the start and {loads[1]:.1f} at the end, Spark `local[2]`, Arrow batches of
{ARROW_BATCH_ROWS:,} rows, Parquet in and out. Warm: median of {args.repeats} rounds that take
the paths in turn, after one untimed run of each in the same session; cold: that first run.
{args.rows:,} rows for side_effects, {args.wide_rows:,} for the wide model
(256 → 1024 → 1024 → 10). Each session kind is measured with its own floor, in its own rounds
(classic first, then Connect in a process of its own). "our job" is `batch.job.run`, what
`python -m batch score` runs (here pyarrow reads and writes the files in Spark's tasks); "our
DataFrame path" is `score_dataframe` with Spark's writer, what the Transformer and `--io spark`
use; "no writer" is the same into Spark's `noop` sink (compared with `predict_batch_udf` into
it too); "Parquet copy, no Python", "mapInArrow passthrough" (an identity function, no model)
and "mapInArrow + our columns, no model" (each batch comes back with our output columns, the
real outputs of the first rows scored once, without running the model) are the ceilings of any
path through Spark's reader and writer, the last of any that writes the columns ours writes.

{chr(10).join(lines)}

{_targets(results)} The whole CLI run (`python -m batch score`, Spark start included) on
{args.rows:,} rows took **{statistics.median(cli_seconds):.1f} s** (median of {len(cli_seconds)}
runs, a process each, after the measurements above: {", ".join(f"{s:.1f}" for s in cli_seconds)} s).
"""


def _targets(results: Results) -> str:
    """The issue's goals, read off the table: our DataFrame path against predict_batch_udf and,
    on the tiny model, against the floor."""
    parts = []
    for session in dict.fromkeys(s for s, _, _ in results):
        ratios = []
        for data in dict.fromkeys(d for s, d, _ in results if s == session):
            ours = results.get((session, data, OURS), {}).get("warm")
            pbu = results.get((session, data, PBU), {}).get("warm")
            if ours and pbu:
                ratios.append(f"{ours / pbu:.2f}× `predict_batch_udf` on {data}")
        tiny = results.get((session, "side_effects, 1 column", OURS), {}).get("warm")
        base = results.get((session, "side_effects, 1 column", FLOOR), {}).get("warm")
        if tiny and base:
            ratios.append(f"{tiny / base:.2f}× the floor on side_effects")
        if ratios:
            parts.append(f"On {session}, our DataFrame path ran at {', '.join(ratios)}.")
    return " ".join(parts)


if __name__ == "__main__":
    main()
