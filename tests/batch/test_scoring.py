"""Scoring DataFrames: the same answers as `inference` and the HTTP service, bad rows kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import inference
from batch import ScoringError, score_dataframe
from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS

SIDE_EFFECTS = inference.load(MODELS / "side_effects")
IRIS = inference.load(MODELS / "iris")
IRIS_FEATURES = IRIS.metadata.feature_names


def ages(spark: SparkSession, n: int = 5000, partitions: int = 4):  # type: ignore[no-untyped-def]
    rows = np.random.default_rng(0).integers(13, 101, n).astype(float)
    return spark.createDataFrame(
        [(i, float(a)) for i, a in enumerate(rows)], "id long, age double"
    ).repartition(partitions)


def test_thousands_of_rows_across_partitions_equal_in_process(spark: SparkSession):
    df = ages(spark)
    assert df.rdd.getNumPartitions() == 4
    scored = score_dataframe(df, MODELS / "side_effects").orderBy("id").toPandas()
    assert len(scored) == 5000
    expected = SIDE_EFFECTS.predict(scored[["age"]].to_numpy(np.float32))
    np.testing.assert_allclose(np.stack(scored["pred_scores"]), expected.scores, atol=1e-6)
    assert scored["pred_class_index"].tolist() == expected.class_index.tolist()
    assert scored["pred_label"].tolist() == expected.labels
    np.testing.assert_allclose(scored["pred_score_side_effects"], expected.scores[:, 1], atol=1e-6)
    assert scored["pred_error"].isna().all()


def test_the_http_service_agrees_with_spark(spark: SparkSession):
    df = ages(spark, n=300, partitions=3)
    scored = score_dataframe(df, MODELS / "side_effects").orderBy("id").toPandas()
    with TestClient(create_app(Settings(repo=MODELS))) as client:
        while client.get("/v2/health/ready").status_code != 200:
            pass
        body = client.post(
            "/v1/models/side_effects:predict", json={"instances": scored["age"].tolist()}
        ).json()
    online = np.array(
        [[p["scores"]["no_side_effects"], p["scores"]["side_effects"]] for p in body["predictions"]]
    )
    np.testing.assert_allclose(np.stack(scored["pred_scores"]), online, atol=1e-6)
    assert [p["label"] for p in body["predictions"]] == scored["pred_label"].tolist()


def test_columns_are_kept_and_bad_rows_reported_not_dropped(spark: SparkSession):
    df = spark.createDataFrame(
        [(1, "70", "a"), (2, None, "b"), (3, "abc", "c"), (4, "NaN", "d"), (5, "20", "e")],
        "id int, age string, note string",
    )
    scored = score_dataframe(df, MODELS / "side_effects", prefix="p_").orderBy("id").collect()
    assert len(scored) == 5
    assert [r["note"] for r in scored] == ["a", "b", "c", "d", "e"]
    assert [r["age"] for r in scored] == ["70", None, "abc", "NaN", "20"]  # as they were
    assert [r["p_error"] for r in scored] == [
        None,
        "feature 'age' is null",
        "feature 'age': 'abc' is not a number",
        "feature 'age' is NaN",
        None,
    ]
    assert [r["p_label"] for r in scored] == ["side_effects", None, None, None, "no_side_effects"]
    assert scored[1]["p_scores"] is None


def test_iris_named_columns_in_any_order(spark: SparkSession):
    rows = np.random.default_rng(1).normal(4, 2, size=(400, 4))
    df = spark.createDataFrame(
        [tuple(map(float, r)) for r in rows],
        ", ".join(f"{n} double" for n in reversed(IRIS_FEATURES)),
    )
    scored = score_dataframe(df, MODELS / "iris").toPandas()
    matrix = scored[IRIS_FEATURES].to_numpy(np.float32)  # model order, whatever the table order
    np.testing.assert_allclose(
        np.stack(scored["pred_scores"]), IRIS.predict(matrix).scores, atol=1e-6
    )
    assert {"pred_score_setosa", "pred_score_versicolor", "pred_score_virginica"} <= set(
        scored.columns
    )


def test_one_array_column_layout(spark: SparkSession):
    rows = np.random.default_rng(2).normal(4, 2, size=(200, 4))
    df = spark.createDataFrame(
        [(i, list(map(float, r))) for i, r in enumerate(rows)], "id long, x array<double>"
    )
    scored = score_dataframe(df, MODELS / "iris", features_column="x").orderBy("id").toPandas()
    np.testing.assert_allclose(
        np.stack(scored["pred_scores"]), IRIS.predict(rows).scores, atol=1e-6
    )


def test_featurize_then_fit_mllib_logistic_regression(spark: SparkSession):
    """Transfer learning: a hidden layer's activations as features for an MLlib model."""
    df = ages(spark, n=2000).withColumn("label", (F.col("age") >= 65).cast("double"))
    features = score_dataframe(df, MODELS / "side_effects", outputs=["dense_1"])
    assert "pred_dense_1" in features.columns and "pred_label" not in features.columns
    vectors = features.select("label", array_to_vector("pred_dense_1").alias("features"))
    model = LogisticRegression(maxIter=50).fit(vectors)
    assert model.numFeatures == 32
    assert model.summary.accuracy > 0.9


def test_missing_column_is_an_error_before_any_work(spark: SparkSession):
    with pytest.raises(
        ScoringError,
        match=r"feature column\(s\) 'age' are not in the input; the model expects age; input columns: id, years",
    ):
        score_dataframe(
            spark.createDataFrame([(1, 2.0)], "id int, years double"), MODELS / "side_effects"
        )


def test_unusable_column_type(spark: SparkSession):
    df = spark.createDataFrame([(True,)], "age boolean")
    with pytest.raises(
        ScoringError, match=r"must hold numbers \(or text of numbers\): age \(boolean\)"
    ):
        score_dataframe(df, MODELS / "side_effects")


def test_output_column_clash(spark: SparkSession):
    df = spark.createDataFrame([(70.0, "x")], "age double, pred_label string")
    with pytest.raises(
        ScoringError, match=r"output column\(s\) pred_label already exist in the input"
    ):
        score_dataframe(df, MODELS / "side_effects")


def test_unknown_output(spark: SparkSession):
    with pytest.raises(ScoringError, match=r"unknown output\(s\) \['dense_9'\]"):
        score_dataframe(ages(spark, 10), MODELS / "side_effects", outputs=["dense_9"])


def test_an_empty_input(spark: SparkSession):
    df = spark.createDataFrame([], "id long, age double")
    scored = score_dataframe(df, MODELS / "side_effects")
    assert scored.count() == 0
    assert "pred_label" in scored.columns


def test_a_corrupt_model_is_refused(spark: SparkSession, tmp_path: Path):
    folder = tmp_path / "side_effects"
    shutil.copytree(MODELS / "side_effects", folder)
    (folder / "1" / "model.onnx").write_bytes(b"broken")
    with pytest.raises(inference.BundleError, match=r"sha256 does not match"):
        score_dataframe(ages(spark, 10), folder)


def test_every_other_column_comes_back_unchanged(spark: SparkSession):
    """The table passes through Python in Arrow batches: columns of any type the model does not
    read (a timestamp, a decimal, a struct, a map, a Spark ML vector, one named like the extra
    column a vector input travels in) come back as they were, with their metadata."""
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    df = spark.createDataFrame(
        [
            (70.0, Vectors.dense([1.0, 2.0]), {"a": 1}, (1, "x"), "2026-12-06 01:02:03", "1.5", 9),
            (None, Vectors.sparse(2, [0], [3.0]), {}, (2, None), None, None, None),
        ],
        T.StructType(
            [
                T.StructField("age", T.DoubleType()),
                T.StructField("v", VectorUDT()),
                T.StructField("m", T.MapType(T.StringType(), T.IntegerType())),
                T.StructField(
                    "s", T.StructType().add("i", T.IntegerType()).add("t", T.StringType())
                ),
                T.StructField("ts", T.StringType()),
                T.StructField("d", T.StringType()),
                T.StructField("__bundle_input_0__", T.IntegerType()),
            ]
        ),
    ).select(
        "*",
        F.to_timestamp("ts").alias("when"),
        F.col("d").cast("decimal(10,2)").alias("amount"),
        F.col("age").alias("age_again", metadata={"unit": "years"}),
    )
    scored = score_dataframe(df, MODELS / "side_effects")
    assert scored.columns[: len(df.columns)] == df.columns
    assert scored.schema["age_again"].metadata == {"unit": "years"}
    assert scored.select(*df.columns).collect() == df.collect()
    rows = scored.collect()
    assert [r["pred_label"] for r in rows] == ["side_effects", None]
    assert rows[1]["pred_error"] == "feature 'age' is null"
