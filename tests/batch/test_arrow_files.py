"""The job's two ways through the files: pyarrow inside Spark's tasks (`--io arrow`, the default
where it can run) and Spark's own reader and writer (`--io spark`). Same rows, same columns, same
values, the same bad-row reports; and the Arrow way steps aside wherever it could change data."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

import inference
from batch.job import BadRowsError, JobError, JobReport, run
from tests.conftest import MODELS

SIDE_EFFECTS = MODELS / "side_effects"


def patients(folder: Path, files: int = 3, rows: int = 1500) -> Path:
    """`files` Parquet files of mixed, partly bad rows, several row groups each."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for f in range(files):
        ages = rng.integers(13, 101, rows).astype(float)
        ages[[5, 50]] = [np.nan, np.inf]
        ids = np.arange(rows) + f * rows
        table = pa.table(
            {
                "id": ids,
                "age": pa.array(ages, mask=ids % 500 == 7),
                "note": pa.array([f"n{i}" if i % 3 else None for i in ids]),
                "tags": pa.array([[int(i), 1] for i in ids], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=400)
    (folder / "_SUCCESS").touch()  # what Spark leaves: must be skipped, as Spark does
    return folder


def score(spark: SparkSession, source: Path, out: Path, io: str, **kw: object) -> JobReport:
    return run(
        spark,
        model=str(kw.pop("model", SIDE_EFFECTS)),
        input_path=str(source),
        output_path=str(out),
        io=io,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def read(spark: SparkSession, path: Path):  # type: ignore[no-untyped-def]
    """What a Spark user sees: the schema and the rows, in id order."""
    df = spark.read.parquet(str(path))
    return df.schema, df.orderBy("id").toPandas()


def test_arrow_and_spark_write_the_same_table(spark: SparkSession, tmp_path: Path):
    source = patients(tmp_path / "in")
    arrow = score(spark, source, tmp_path / "arrow", "arrow")
    spark_io = score(spark, source, tmp_path / "spark", "spark")
    assert (arrow.rows, arrow.bad_rows) == (spark_io.rows, spark_io.bad_rows) == (4500, 15)
    assert arrow.partitions >= 2  # the row groups were split over tasks
    schema_a, rows_a = read(spark, tmp_path / "arrow")
    schema_s, rows_s = read(spark, tmp_path / "spark")
    assert schema_a.simpleString() == schema_s.simpleString()
    for column in rows_s.columns:
        assert rows_a[column].astype(str).tolist() == rows_s[column].astype(str).tolist(), column
    good = rows_a[rows_a["pred_error"].isna()]
    expected = inference.load(SIDE_EFFECTS).predict(good[["age"]].to_numpy(np.float32))
    np.testing.assert_allclose(np.stack(good["pred_scores"]), expected.scores, atol=1e-6)
    assert good["pred_label"].tolist() == expected.labels
    assert set(rows_a["pred_error"].dropna()) == {
        "feature 'age' is NaN",
        "feature 'age' is infinite",
        "feature 'age' is null",
    }
    assert rows_a["pred_label"][rows_a["pred_error"].notna()].isna().all()
    assert (tmp_path / "arrow" / "_SUCCESS").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_wide_array_column_through_arrow(spark: SparkSession, tmp_path: Path):
    iris = inference.load(MODELS / "iris")
    x = np.random.default_rng(2).normal(5, 1, (900, 4)).astype(np.float32)
    rows = [list(map(float, r)) for r in x]
    rows[3] = [1.0, 2.0]  # wrong length: reported, not dropped
    source = tmp_path / "iris.parquet"
    pq.write_table(
        pa.table({"id": np.arange(900), "x": pa.array(rows, pa.list_(pa.float64()))}), source
    )
    report = score(
        spark, source, tmp_path / "o", "arrow", model=MODELS / "iris", features_column="x"
    )
    assert (report.rows, report.bad_rows) == (900, 1)
    table = pq.read_table(tmp_path / "o").to_pandas().sort_values("id")
    assert table["pred_error"].iloc[3] == "'x' has 2 values; expected 4"
    good = table.drop(index=3)
    expected = iris.predict(np.delete(x, 3, axis=0))
    np.testing.assert_allclose(np.stack(good["pred_scores"]), expected.scores, atol=1e-6)


def test_empty_input_gives_an_empty_table_with_the_columns(spark: SparkSession, tmp_path: Path):
    source = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"id": pa.array([], pa.int64()), "age": pa.array([], pa.float64())}), source
    )
    report = score(spark, source, tmp_path / "o", "arrow")
    assert (report.rows, report.bad_rows) == (0, 0)
    schema, rows = read(spark, tmp_path / "o")
    assert len(rows) == 0
    assert "pred_label" in schema.fieldNames()


def test_bad_rows_fail_the_job_with_the_first_message(spark: SparkSession, tmp_path: Path):
    source = patients(tmp_path / "in", files=1)
    with pytest.raises(BadRowsError, match=r"5 of 1500 rows could not be scored .* first: feature"):
        score(spark, source, tmp_path / "o", "arrow", fail_on_bad_rows=True)
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_partitioned_input_goes_through_spark(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    source = tmp_path / "by_day"
    for day in ("2026-01-01", "2026-01-02"):
        (source / f"day={day}").mkdir(parents=True)
        pq.write_table(
            pa.table({"id": [1, 2], "age": [30.0, 70.0]}), source / f"day={day}/p.parquet"
        )
    with pytest.raises(JobError, match=r"--io arrow cannot run this job: .* has sub-folders"):
        score(spark, source, tmp_path / "a", "arrow")
    with caplog.at_level(logging.INFO, logger="batch"):
        report = score(spark, source, tmp_path / "o", "auto")
    assert "Spark reads and writes the files" in caplog.text
    assert report.rows == 4
    _, rows = read(spark, tmp_path / "o")
    assert sorted(rows["day"].astype(str)) == ["2026-01-01"] * 2 + ["2026-01-02"] * 2


@pytest.mark.parametrize(
    ("columns", "options", "reason"),
    [
        ({"n": pa.array([1, 2], pa.uint32())}, {}, "n (uint32)"),  # Spark reads bigint
        (  # legacy INT96 timestamps (Hive, Impala): pyarrow reads them as nanoseconds
            {"t": pa.array([1, 2], pa.timestamp("us"))},
            {"use_deprecated_int96_timestamps": True},
            "t (timestamp[ns])",
        ),
    ],
)
def test_types_pyarrow_would_change_go_through_spark(
    spark: SparkSession,
    tmp_path: Path,
    columns: dict[str, pa.Array],
    options: dict[str, bool],
    reason: str,
):
    source = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2], "age": [30.0, 70.0], **columns}), source, **options)
    with pytest.raises(JobError, match=re.escape(f"column type(s) {reason} are left to Spark")):
        score(spark, source, tmp_path / "a", "arrow")
    assert score(spark, source, tmp_path / "o", "auto").rows == 2


def test_files_with_other_schemas_go_through_spark(spark: SparkSession, tmp_path: Path):
    source = tmp_path / "mixed"
    source.mkdir()
    pq.write_table(pa.table({"id": [1], "age": [30.0]}), source / "a.parquet")
    pq.write_table(pa.table({"id": [2], "age": [70.0], "extra": ["x"]}), source / "b.parquet")
    with pytest.raises(JobError, match="differ in schema"):
        score(spark, source, tmp_path / "a", "arrow")
    assert score(spark, source, tmp_path / "o", "auto").rows == 2


def test_a_file_that_is_not_parquet_is_named(spark: SparkSession, tmp_path: Path):
    source = patients(tmp_path / "in", files=1)
    (source / "notes.parquet").write_text("not parquet")
    with pytest.raises(JobError, match=r"notes\.parquet is not a readable Parquet file"):
        score(spark, source, tmp_path / "o", "auto")
    with pytest.raises(Py4JJavaError) as caught:  # Spark's reader: the CLI prints it on one line
        score(spark, source, tmp_path / "o", "spark")
    assert "notes.parquet. Could not read footer" in str(caught.value.java_exception)
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("io", ["arrow", "spark"])
def test_the_output_may_not_overwrite_the_input(spark: SparkSession, tmp_path: Path, io: str):
    source = patients(tmp_path / "in", files=1)
    for out in (source, source / "scored", tmp_path):
        with pytest.raises(JobError, match="write the scores somewhere else"):
            score(spark, source, out, io, mode="overwrite")
    assert len(pq.read_table(source)) == 1500
