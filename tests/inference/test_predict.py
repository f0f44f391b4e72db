"""Predicting in-process: arrays, columns, records; named outputs; clear errors for bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import inference
from inference import InvalidInputError, ProviderUnavailableError, RuntimeOptions
from inference.model import Latency

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def model(iris_bundle: Path) -> inference.Model:
    return inference.load(iris_bundle)


def test_predict_gives_scores_class_index_and_labels(model: inference.Model):
    prediction = model.predict(np.array(ROWS))
    assert prediction.scores.shape == (2, 3)
    assert prediction.scores.dtype == np.float32
    np.testing.assert_allclose(prediction.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert prediction.class_index.tolist() == np.argmax(prediction.scores, axis=1).tolist()
    assert prediction.labels == ["setosa", "virginica"]
    assert list(prediction.outputs) == ["scores", "class_index"]


def test_columns_records_and_arrays_agree(model: inference.Model):
    by_array = model.predict(ROWS).scores
    columns = {name: [row[i] for row in ROWS] for i, name in enumerate(FEATURES)}
    np.testing.assert_array_equal(model.predict_columns(columns).scores, by_array)
    records = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
    np.testing.assert_array_equal(model.predict_records(records).scores, by_array)


def test_hidden_layers_on_request(model: inference.Model):
    prediction = model.predict(ROWS, outputs=["dense"])
    assert list(prediction.outputs) == ["dense"]
    assert prediction["dense"].shape == (2, 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            [[1.0, 2.0, 3.0]],
            r"expected a 2-D batch of shape \[rows, 4\] \(sepal_length, .*\), got shape \[1, 3\]",
        ),
        ([1.0, 2.0, 3.0, 4.0], r"got shape \[4\]"),
        ([], r"the batch is empty: send at least one row"),
        (np.zeros((0, 4)), r"the batch is empty"),
        ([[1.0, "tall", 3.0, 4.0]], r"features must be numbers, got text such as 'tall'"),
        (
            [["5.1", "3.5", "1.4", "0.2"]],
            r"features must be numbers, got quoted numbers such as '5.1'",
        ),
        ([[True, False, True, False]], r"features must be numbers, got true/false values"),
        ([[1.0, True, 3.0, 4.0]], r"features must be numbers, got true/false among them"),
        ([[1.0, 2.0, 3.0, 4.0]] * 20 + [[0, 1, 2, False]], r"got true/false among them"),
        ([[1.0, None, 3.0, 4.0]], r"features must be numbers, got null \(a missing value\)"),
        (
            [[1.0, 2.0, 3.0, 4.0], [1.0, math.nan, 3.0, 4.0]],
            r"row 1, feature 'sepal_width': nan is missing or not a finite number \(1 such row\(s\)\)",
        ),
        (
            [[math.inf, 2.0, 3.0, 4.0]],
            r"row 0, feature 'sepal_length': inf is missing or not a finite number",
        ),
        ([[1.0, 2.0], [3.0, 4.0, 5.0]], r"features must be a regular 2-D batch of numbers"),
    ],
)
def test_bad_arrays_are_explained(model: inference.Model, data: object, message: str):
    with pytest.raises(InvalidInputError, match=message):
        model.predict(data)


def test_bad_columns_and_records_are_explained(model: inference.Model):
    with pytest.raises(
        InvalidInputError,
        match=r"missing feature\(s\) 'petal_width' and unknown feature\(s\) 'petal_widht'; this model expects: sepal_length",
    ):
        model.predict_columns(
            {"sepal_length": [1], "sepal_width": [1], "petal_length": [1], "petal_widht": [1]}
        )
    with pytest.raises(InvalidInputError, match=r"feature columns must be 1-D and of equal length"):
        model.predict_columns(
            {name: [1.0] * (2 if name == "sepal_length" else 1) for name in FEATURES}
        )
    with pytest.raises(InvalidInputError, match=r"feature 'petal_width' must be numbers, got true"):
        model.predict_columns({**{name: [1.0, 2.0] for name in FEATURES}, "petal_width": [1, True]})
    with pytest.raises(
        InvalidInputError, match=r"feature 'sepal_length' must be numbers, got true"
    ):
        model.predict_columns(
            {**{name: [1.0] for name in FEATURES}, "sepal_length": np.ones(1, bool)}
        )
    with pytest.raises(InvalidInputError, match=r"row 1: missing feature\(s\) 'sepal_width'"):
        model.predict_records([dict(zip(FEATURES, ROWS[0], strict=True)), {"sepal_length": 1}])


def test_unknown_output_is_explained(model: inference.Model):
    with pytest.raises(
        InvalidInputError,
        match=r"unknown output\(s\) 'probabilities'; this model has: scores, class_index, dense",
    ):
        model.predict(ROWS, outputs=["probabilities"])


def test_threads_are_set_explicitly(iris_bundle: Path):
    model = inference.load(iris_bundle, options=RuntimeOptions(intra_op_threads=1))
    assert model.predict(ROWS).labels == ["setosa", "virginica"]
    assert 1 <= inference.available_cpus() <= 4096


CPU_ONLY = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime has CUDA (tests/gpu covers it)",
)


@CPU_ONLY
def test_cuda_without_its_runtime_is_an_error_not_a_silent_fallback(iris_bundle: Path):
    with pytest.raises(
        ProviderUnavailableError,
        match=r"execution provider 'cuda' \(CUDAExecutionProvider\) is not available",
    ):
        inference.load(iris_bundle, options=RuntimeOptions(providers=("cuda",)))


@CPU_ONLY
def test_cuda_falls_back_to_cpu_only_when_allowed(iris_bundle: Path):
    model = inference.load(
        iris_bundle, options=RuntimeOptions(providers=("cuda", "cpu"), allow_cpu_fallback=True)
    )
    assert model.providers == ["CPUExecutionProvider"]


def test_unknown_provider(iris_bundle: Path):
    with pytest.raises(
        ProviderUnavailableError,
        match=r"unknown execution provider 'tpu'; known: cpu, cuda, tensorrt",
    ):
        inference.load(iris_bundle, options=RuntimeOptions(providers=("tpu",)))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs → 2 threads
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_threads_follow_the_container_cpu_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
):
    import os

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    host = len(os.sched_getaffinity(0))
    assert inference.available_cpus(tmp_path) == min(host, expected or host)


def test_warm_up_records_the_probe_it_measured(iris_bundle: Path):
    model = inference.load(iris_bundle)
    latency = model.warm_up(probe_rows=64)
    assert model.latency is latency
    assert latency.probe_rows == 64
    assert latency.probe_s > 0 and latency.fixed_s > 0


def test_past_the_probe_a_flat_fit_cannot_make_a_large_batch_look_free():
    """A slow one-row run during warm-up (a busy machine) fits a slope of ~0; past the rows
    that were measured, the probe's own cost per row still bounds the estimate."""
    flat = Latency(fixed_s=25e-6, per_row_s=0.0, probe_rows=256, probe_s=22e-6)
    assert flat.estimate(256) == pytest.approx(25e-6)  # measured range: the fit
    assert flat.estimate(50_000) == pytest.approx(22e-6 * 50_000 / 256)
    steep = Latency(fixed_s=1e-6, per_row_s=3e-6, probe_rows=10, probe_s=11e-6)
    assert steep.estimate(1000) == pytest.approx(3001e-6)  # the fit, where it is higher
