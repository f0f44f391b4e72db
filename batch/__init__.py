"""Score tables with a model bundle on Spark: a job, a DataFrame function, an ML Transformer and a
SQL function, all over the same `inference` runtime as the HTTP service.

    python -m batch score --model models/side_effects --input patients.parquet --output scored/

    from batch import score_dataframe
    scored = score_dataframe(spark.read.parquet("patients.parquet"), "models/side_effects")
"""

from batch.scoring import ScoringError, score_dataframe

__all__ = ["ScoringError", "score_dataframe"]
