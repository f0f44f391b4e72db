"""A Spark Connect client, run by tests/batch/test_connect.py in a process of its own (a classic
session and a local Connect server cannot share the test process): it scores through every
DataFrame-level interface on `SparkSession.builder.remote("local[2]")` and prints what came back
as JSON, for the test to compare with onnxruntime run directly.

    python tests/batch/connect_client.py <model repository> <work folder>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import SparkSession

from batch import score_dataframe
from batch.sql import register_model
from batch.transformer import BundleTransformer


def main(repo: Path, work: Path) -> dict[str, object]:
    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    try:
        kind = type(spark).__module__
        ages = spark.createDataFrame([(20.0,), (70.0,), (45.0,), (None,)], "age double")
        tabular = score_dataframe(ages, repo / "side_effects").orderBy("age").collect()
        images = spark.createDataFrame(
            [(i, [float(v) for v in range(64)]) for i in range(3)], "id long, pixels array<double>"
        )
        tensors = score_dataframe(
            images, repo / "digits_cnn", input_columns={"image": "pixels"}
        ).orderBy("id")
        register_model(spark, "side_effects", str(repo / "side_effects"))
        ages.createOrReplaceTempView("patients")
        sql = spark.sql("SELECT side_effects(age) AS p FROM patients WHERE age = 70").collect()
        transformer = BundleTransformer(modelPath=str(repo / "side_effects"), outputPrefix="t_")
        saved = str(work / "transformer")
        transformer.write().overwrite().save(saved)
        transformer.write().overwrite().save(saved)  # twice: the overwrite has something to clear
        loaded = BundleTransformer.load(saved)
        pipeline = Pipeline(stages=[loaded]).fit(ages)
        pipeline.write().save(str(work / "pipeline"))
        again = PipelineModel.load(str(work / "pipeline")).transform(ages).orderBy("age")
        return {
            "session": kind,
            "tabular": [
                [r["age"], r["pred_label"], r["pred_scores"], r["pred_error"]] for r in tabular
            ],
            "tensors": [r["pred_scores"] for r in tensors.collect()],
            "sql": [sql[0]["p"]["label"], sql[0]["p"]["scores"]],
            "transformer": [r["t_label"] for r in again.collect()],
        }
    finally:
        spark.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
