"""Register a bundle as a SQL function: `SELECT side_effects(age).label FROM patients`.

A tabular model's function takes its features as arguments, in the order of its signature, and
returns a struct: `scores`, `class_index`, `label` (classifiers) or `predictions`
(regressors), and `error`. Any other model's function takes one argument per model input, in
the graph's order (an array per row, flat or nested, or a scalar for an input of shape [-1]),
and returns one struct field per output and `error`:

    SELECT digits_cnn(pixels).scores FROM images
    SELECT tokens(ids, mask).logits FROM sentences

Spark ML vectors have no SQL form: convert them with `pyspark.ml.functions.vector_to_array`
first (`score_dataframe` and the Transformer do it for you).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

import inference
from batch.scoring import scoring_spec, scoring_udf


def register_model(
    spark: SparkSession, name: str, model: str | Path, version: int | None = None
) -> None:
    """Make `name(column, ...)` callable from SQL in this session."""
    bundle = inference.load(model, version=version)
    spec = scoring_spec(spark, bundle, None, None)
    spark.udf.register(name, scoring_udf(spec, len(spec.input_columns)))
