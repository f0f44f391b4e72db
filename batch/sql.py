"""Register a bundle as a SQL function: `SELECT side_effects(age).label FROM patients`.

The function takes the model's features as arguments, in the order of its signature, and
returns a struct: `scores`, `class_index`, `label` (classifiers) or `predictions`
(regressors), and `error`.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

import inference
from batch.scoring import scoring_spec, scoring_udf


def register_model(
    spark: SparkSession, name: str, model: str | Path, version: int | None = None
) -> None:
    """Make `name(feature, ...)` callable from SQL in this session."""
    bundle = inference.load(model, version=version)
    spec = scoring_spec(spark, bundle, None, None)
    spark.udf.register(name, scoring_udf(spec, len(spec.feature_names)))
