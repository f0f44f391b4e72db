"""Structured Streaming (issue 24): `score_dataframe` and the Transformer on a streaming
DataFrame, from a file source to a Parquet sink with a checkpoint. A run stopped and started
again from its checkpoint scores each row exactly once: rows out = rows in, none twice. This is
the streaming example of docs/batch.md, run (tested: tests/batch/test_streaming.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

import inference
from batch import score_dataframe
from batch.transformer import BundleTransformer
from tests.conftest import MODELS

SCHEMA = "id long, age double"


def drop(folder: Path, name: str, ids: range) -> None:
    """A new file in the watched folder, written aside and renamed in (as a producer should)."""
    ages = [None if i % 7 == 3 else float(13 + i % 88) for i in ids]
    table = pa.table({"id": pa.array(list(ids), pa.int64()), "age": pa.array(ages, pa.float64())})
    pq.write_table(table, folder / f".{name}.tmp")
    (folder / f".{name}.tmp").rename(folder / f"{name}.parquet")


def run_once(spark: SparkSession, source: Path, sink: Path, checkpoint: Path, how: str) -> None:
    stream = spark.readStream.schema(SCHEMA).parquet(str(source))
    model = str(MODELS / "side_effects")
    if how == "transformer":
        scored = BundleTransformer(modelPath=model).transform(stream)
    else:
        scored = score_dataframe(stream, model)
    query = (
        scored.writeStream.format("parquet")
        .option("path", str(sink))
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)
    assert query.exception() is None


@pytest.mark.slow
@pytest.mark.parametrize("how", ["score_dataframe", "transformer"])
def test_a_stream_is_scored_exactly_once_across_a_restart(
    spark: SparkSession, tmp_path: Path, how: str
):
    source, sink, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "checkpoint"
    source.mkdir()
    drop(source, "a", range(0, 300))
    drop(source, "b", range(300, 500))
    run_once(spark, source, sink, checkpoint, how)
    drop(source, "c", range(500, 800))  # arrives while the query is down
    run_once(spark, source, sink, checkpoint, how)  # the same checkpoint: only c is new
    out = pq.read_table(sink).to_pandas().sort_values("id")
    assert out["id"].tolist() == list(range(800))  # rows out = rows in, none twice
    bad = out[out["age"].isna()]
    assert bad["pred_error"].notna().all() and bad["pred_label"].isna().all()
    good = out[out["age"].notna()]
    expected = inference.load(MODELS / "side_effects").predict(
        good[["age"]].to_numpy(np.float32), outputs=["class_index"]
    )
    assert good["pred_class_index"].tolist() == expected["class_index"].tolist()
