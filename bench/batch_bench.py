"""Batch benchmark: our Spark job against the single-process floor and Spark's alternatives.

    make bench-batch    # or: .venv/bin/python bench/batch_bench.py --rows 2000000 --repeats 3

On the same Parquet data, in one run, with Spark `local[2]` (one warm session):
- the floor: one process, pyarrow read → onnxruntime in large batches (1 thread) → Parquet;
- our job (`batch.job.run`, what `python -m batch score` runs: here pyarrow reads and writes the
  files inside Spark's tasks), cold (the first job to start Python workers) and warm;
- our DataFrame path (`score_dataframe` → Spark's Parquet writer: what the Transformer, the SQL
  function and `--io spark` use);
- `pyspark.ml.functions.predict_batch_udf` with the same onnxruntime session;
- a row-at-a-time Python UDF (Arrow-batched by Spark 4, one row per `session.run`).
Models: `side_effects` (1 feature) and a wide 256 → 1024 → 1024 → 10 model, its features as 256
columns and as one array column. Also the whole CLI run (`python -m batch score`, Spark start
included) on the tiny data. Results replace the batch section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import inference
from batch import job, score_dataframe
from batch.session import spark_session
from bench.common import ROOT, machine, write_section
from bench.models import WIDE_FEATURES, make_wide_bundle

Runner = Callable[[str, str], None]


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


def spark_runners(spark, bundle: Path, features_column: str | None) -> dict[str, Runner]:  # type: ignore[no-untyped-def]
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    meta = inference.load(bundle).metadata
    names = meta.feature_names

    def ours(source: str, out: str) -> None:
        job.run(
            spark,
            model=str(bundle),
            input_path=source,
            output_path=out,
            features_column=features_column,
        )

    def ours_through_spark_sql(source: str, out: str) -> None:
        score_dataframe(
            spark.read.parquet(source), bundle, features_column=features_column
        ).write.parquet(out)

    def make_predict_fn():  # type: ignore[no-untyped-def]
        model = inference.load(bundle, options=inference.RuntimeOptions(intra_op_threads=1))
        return lambda x: model.run(np.asarray(x, np.float32).reshape(len(x), -1)).scores

    predict = predict_batch_udf(
        make_predict_fn,
        return_type=ArrayType(FloatType()),
        batch_size=10_000,
        input_tensor_shapes=[[len(names)]],
    )

    def with_predict_batch_udf(source: str, out: str) -> None:
        df = spark.read.parquet(source)
        features = (
            F.col(features_column) if features_column else F.array(*[F.col(n) for n in names])
        )
        df.withColumn("pred_scores", predict(features)).write.parquet(out)

    cache: dict[str, inference.Model] = {}

    @F.udf(returnType=ArrayType(FloatType()))
    def one_row(*values):  # type: ignore[no-untyped-def]
        if "m" not in cache:
            cache["m"] = inference.load(
                bundle, options=inference.RuntimeOptions(intra_op_threads=1)
            )
        row = values[0] if features_column else values
        return cache["m"].run(np.asarray([row], np.float32)).scores[0].tolist()

    def row_at_a_time(source: str, out: str) -> None:
        df = spark.read.parquet(source)
        args = [F.col(features_column)] if features_column else [F.col(n) for n in names]
        df.withColumn("pred_scores", one_row(*args)).write.parquet(out)

    return {
        "our job": ours,
        "our DataFrame path": ours_through_spark_sql,
        "predict_batch_udf": with_predict_batch_udf,
        "row-at-a-time UDF": row_at_a_time,
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    try:
        results, cli_seconds = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = (
        f"python bench/batch_bench.py --rows {args.rows} --wide-rows {args.wide_rows} "
        f"--repeats {args.repeats}"
    )
    write_section("batch", report(results, cli_seconds, command, args))


def run(
    work: Path, args: argparse.Namespace
) -> tuple[dict[tuple[str, str], dict[str, float]], float]:
    data = make_data(work, args.rows, args.wide_rows)
    wide = make_wide_bundle(work / "models" / "wide")
    tiny = ROOT / "models" / "side_effects"
    cases = [
        ("side_effects, 1 column", tiny, data["tiny"], None, args.rows),
        ("wide, 256 columns", wide, data["wide_columns"], None, args.wide_rows),
        ("wide, one array column", wide, data["wide_array"], "x", args.wide_rows),
    ]
    counter = iter(range(10_000))

    def out() -> str:
        return str(work / f"out-{next(counter)}")

    spark = spark_session("local[2]", app_name="batch-bench")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for name, bundle, source, column, rows in cases:
        runners: dict[str, Callable[[], None]] = {
            "floor (1 process, 1 thread)": lambda b=bundle, s=source, c=column: floor(
                b, s, Path(out()), c
            ),
        }
        for path, runner in spark_runners(spark, bundle, column).items():
            runners[path] = lambda r=runner, s=source: r(str(s), out())
        for path, speed in _measure(runners, rows, args.repeats).items():
            results[(name, path)] = speed
            print(f"{name:<24} {path:<22} {speed}", flush=True)
    spark.stop()
    cli = [
        sys.executable,
        "-m",
        "batch",
        "score",
        "--model",
        str(tiny),
        "--input",
        str(data["tiny"]),
        "--output",
        out(),
    ]
    cli_seconds = timed(
        lambda: subprocess.run(
            cli,
            cwd=ROOT,
            check=True,
            capture_output=True,
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        )
    )
    return results, cli_seconds


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
            "cold": float("nan") if path.startswith("floor") else rows / cold[path],
            "warm": rows / statistics.median(warm[path]),
        }
        for path in runners
    }


def report(
    results: dict[tuple[str, str], dict[str, float]],
    cli_seconds: float,
    command: str,
    args: argparse.Namespace,
) -> str:
    lines = [
        "| data | path | warm rows/s | vs floor | cold rows/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (data, path), speed in results.items():
        base = results[(data, "floor (1 process, 1 thread)")]["warm"]
        cold = "" if np.isnan(speed["cold"]) else f"{speed['cold']:,.0f}"
        lines.append(
            f"| {data} | {path} | {speed['warm']:,.0f} | {speed['warm'] / base:.2f}× | {cold} |"
        )
    tiny = "side_effects, 1 column"
    ours = results[(tiny, "our job")]["warm"]
    vs_pbu = ours / results[(tiny, "predict_batch_udf")]["warm"]
    vs_row = ours / results[(tiny, "row-at-a-time UDF")]["warm"]
    ratios = (
        f"On the tiny model our job runs at {vs_pbu:.1f}× `predict_batch_udf` and {vs_row:.1f}× "
        f"the row-at-a-time UDF."
    )
    return f"""## Batch (Spark)

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}, Spark `local[2]`, Arrow batches of
10,000 rows, Parquet in and out. Warm: median of {args.repeats} rounds that take the paths in
turn, after one untimed run of each in the same session; cold: that first run.
{args.rows:,} rows for side_effects, {args.wide_rows:,} for the wide model
(256 → 1024 → 1024 → 10). "our job" is `batch.job.run`, what `python -m batch score` runs (here
pyarrow reads and writes the files in Spark's tasks); "our DataFrame path" is `score_dataframe`
with Spark's writer, what the Transformer, the SQL function and `--io spark` use.

{chr(10).join(lines)}

{ratios} The whole CLI run (`python -m batch score`, Spark start included) on {args.rows:,} rows
took **{cli_seconds:.1f} s**.
"""


if __name__ == "__main__":
    main()
