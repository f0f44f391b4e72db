"""Execution providers for the batch job: checked before Spark starts where the executors are
this machine, carried to the executors, and the CPU fallback scores exactly as the CPU does.
(Scoring on a real GPU is in tests/gpu, which skips without one.)"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from batch.worker import ScoringSpec, model_for, spec_for, task_gpu
from inference import load
from tests.batch.test_arrow_files import patients, read, score
from tests.batch.test_job import batch_cli
from tests.conftest import MODELS

NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_an_unknown_provider_is_refused_before_spark_starts(tmp_path: Path):
    done = batch_cli(
        "score", "--model", "models/side_effects", "--input", str(tmp_path / "in.parquet"),
        "--output", str(tmp_path / "out"), "--providers", "cuda,gpu",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: unknown execution provider 'gpu'; known: cpu, cuda, tensorrt"
    )


@pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_where_this_onnxruntime_has_none_is_one_line_before_spark(tmp_path: Path):
    done = batch_cli(
        "score", "--model", "models/side_effects", "--input", str(tmp_path / "in.parquet"),
        "--output", str(tmp_path / "out"), "--providers", "cuda", "--master", "local[2]",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDAExecutionProvider" in lines[0], done.stderr
    assert "allow the fallback to CPU" in lines[0]
    assert "Spark" not in done.stderr  # nothing started


@pytest.mark.parametrize("io", ["arrow", "spark"])
def test_the_cpu_fallback_scores_as_the_cpu_does(spark: SparkSession, tmp_path: Path, io: str):
    source = patients(tmp_path / "in", files=2, rows=600)
    plain = score(spark, source, tmp_path / "cpu", io)
    fallback = score(
        spark, source, tmp_path / "fallback", io, providers=("cuda", "cpu"),
        allow_cpu_fallback=True,
    )  # fmt: skip
    assert (fallback.rows, fallback.bad_rows) == (plain.rows, plain.bad_rows)
    schema, rows = read(spark, tmp_path / "fallback")
    want_schema, want = read(spark, tmp_path / "cpu")
    assert schema == want_schema
    pd.testing.assert_frame_equal(rows, want)


def test_the_worker_builds_its_session_on_the_specs_providers():
    model = load(MODELS / "side_effects")
    spec = spec_for(model, None, None, providers=("cuda", "cpu"), allow_cpu_fallback=True)
    assert isinstance(spec, ScoringSpec) and spec.providers == ("cuda", "cpu")
    assert task_gpu() == 0  # outside a Spark task: the first GPU
    worker_model = model_for(spec)
    want = (
        ["CPUExecutionProvider"] if NO_CUDA else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert worker_model.providers == want
