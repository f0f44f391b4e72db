"""Score tables with a model bundle on Spark: a job, a DataFrame function, an ML Transformer and a
SQL function, all over the same `inference` runtime as the HTTP service.

    python -m batch score --model models/side_effects --input patients.parquet --output scored/

    from batch import score_dataframe
    scored = score_dataframe(spark.read.parquet("patients.parquet"), "models/side_effects")
    scored = score_dataframe(images, "models/digits_cnn", input_columns={"image": "pixels"})

Any ONNX model: a tabular one reads its feature columns, any other one column per input (an
array per row, flat or nested, or a Spark ML vector); docs/batch-tensors.md says how.

The Spark parts load on first use, so that `batch.worker` (what runs in Spark's Python workers,
and scores Arrow batches) imports without pyspark's SQL layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch.scoring import ScoringError, score_dataframe

__all__ = ["ScoringError", "score_dataframe"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from batch import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'batch' has no attribute {name!r}")
