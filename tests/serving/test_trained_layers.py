"""Image and sequence models trained from a spec (issue 23) are served like any bundle: N-d
rows over v2 and v1, their labels, and a hidden layer as an image's feature vector; and scored
on Spark from array columns, with the same answers as onnxruntime run directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyspark.sql import SparkSession

import inference
from batch import score_dataframe
from tests.serving.conftest import ClientFactory
from tests.training.test_layers import DIGITS_CNN, DIGITS_CSV, write
from training import train

SEQUENCE: dict[str, Any] = {
    "name": "sequence",
    "data": {"source": "builtin:digits", "features": ["pixels"], "label": "digit"},
    "model": {
        "input_shape": [8, 8],  # an image read row by row: 8 steps of 8 values
        "layers": [
            {"type": "gru", "units": 16, "return_sequences": True},
            {"type": "lstm", "units": 16},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
    },
    "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy"},
    "fit": {"epochs": 2, "verbose": 0},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    train(write(root, "digits", {**DIGITS_CNN, "fit": {"epochs": 2, "verbose": 0}}))
    train(write(root, "sequence", SEQUENCE))
    return root


IMAGES = (np.loadtxt(DIGITS_CSV, delimiter=",", max_rows=6)[:, :64] / 16.0).astype(np.float32)


def direct(repo: Path, name: str, rows: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    return inference.load(repo / name / "1").predict({"features": rows}, outputs=outputs)


def test_an_image_model_over_v2_and_v1(make_client: ClientFactory, repo: Path):
    client = make_client(repo=repo)
    images = IMAGES.reshape(-1, 8, 8, 1)
    expected = direct(repo, "digits", images, ["class_index", "flatten"])
    body = {
        "inputs": [
            {
                "name": "features",
                "shape": [6, 8, 8, 1],
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "class_index"}, {"name": "flatten"}],
    }
    answer = client.post("/v2/models/digits/infer", json=body)
    assert answer.status_code == 200, answer.text
    by_name = {o["name"]: o for o in answer.json()["outputs"]}
    assert by_name["class_index"]["data"] == expected["class_index"].tolist()
    assert by_name["flatten"]["shape"] == [6, 128]
    np.testing.assert_allclose(by_name["flatten"]["data"], expected["flatten"].ravel(), atol=1e-5)

    v1 = client.post("/v1/models/digits:predict", json={"instances": images.tolist()})
    assert v1.status_code == 200, v1.text
    labels = [p["label"] for p in v1.json()["predictions"]]
    assert labels == [str(i) for i in expected["class_index"]]

    flat = client.post("/v1/models/digits:predict", json={"instances": IMAGES.tolist()})
    assert flat.status_code == 400
    assert "features" in flat.json()["error"] and "[-1, 8, 8, 1]" in flat.json()["error"]


def test_a_sequence_model_over_v1(make_client: ClientFactory, repo: Path):
    client = make_client(repo=repo)
    rows = IMAGES.reshape(-1, 8, 8)
    expected = direct(repo, "sequence", rows, ["class_index"])["class_index"]
    v1 = client.post("/v1/models/sequence:predict", json={"instances": rows.tolist()})
    assert v1.status_code == 200, v1.text
    assert [p["class_index"] for p in v1.json()["predictions"]] == expected.tolist()


@pytest.mark.slow
def test_scored_on_spark_from_an_array_column(spark: SparkSession, repo: Path):
    frame = spark.createDataFrame(
        [(i, row.tolist()) for i, row in enumerate(IMAGES.astype(float))],
        "id long, pixels array<double>",
    )
    for name, shape in (("digits", (-1, 8, 8, 1)), ("sequence", (-1, 8, 8))):
        scored = score_dataframe(
            frame, repo / name, input_columns={"features": "pixels"}, outputs=["class_index"]
        )
        rows = sorted(scored.collect(), key=lambda r: r["id"])
        expected = direct(repo, name, IMAGES.reshape(shape), ["class_index"])["class_index"]
        assert [r["pred_class_index"] for r in rows] == expected.tolist()
        assert all(r["pred_error"] is None for r in rows)
