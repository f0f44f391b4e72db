"""The Spark ML Transformer inside a saved and reloaded Pipeline, and the SQL function."""

from __future__ import annotations

from pathlib import Path

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import SparkSession

from batch.sql import register_model
from batch.transformer import BundleTransformer
from tests.conftest import MODELS


def test_transformer_in_a_pipeline_saved_and_reloaded(spark: SparkSession, tmp_path: Path):
    df = spark.createDataFrame([(70.0,), (20.0,), (None,)], "age double")
    stage = BundleTransformer(modelPath=str(MODELS / "side_effects"), outputPrefix="se_")
    Pipeline(stages=[stage]).fit(df).write().save(str(tmp_path / "pipeline"))
    reloaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert reloaded.stages[0].getOrDefault("outputPrefix") == "se_"
    rows = reloaded.transform(df).collect()
    assert [r["se_label"] for r in rows] == ["side_effects", "no_side_effects", None]
    assert rows[2]["se_error"] == "feature 'age' is null"


def test_sql_function(spark: SparkSession):
    spark.createDataFrame([(1, 70.0), (2, 20.0)], "id int, age double").createOrReplaceTempView(
        "patients"
    )
    register_model(spark, "side_effects", MODELS / "side_effects")
    rows = spark.sql(
        "SELECT id, side_effects(age).label AS label FROM patients ORDER BY id"
    ).collect()
    assert [r["label"] for r in rows] == ["side_effects", "no_side_effects"]
    iris = spark.createDataFrame(
        [(5.1, 3.5, 1.4, 0.2)], "sl double, sw double, pl double, pw double"
    )
    iris.createOrReplaceTempView("flowers")
    register_model(spark, "iris", MODELS / "iris")
    assert spark.sql("SELECT iris(sl, sw, pl, pw).label FROM flowers").first()[0] == "setosa"
