"""The Spark session for a scoring job: `local[*]` unless a master is given or spark-submit
already chose one; Python workers use the driver's interpreter unless told otherwise."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

ARROW_BATCH_ROWS = 10_000


def spark_session(master: str | None = None, app_name: str = "bundle-scoring") -> SparkSession:
    # Workers must import pyarrow, onnxruntime and `inference`: the driver's interpreter has them.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this process
    if master is not None:
        builder = builder.master(master)
    elif not under_submit:
        builder = builder.master("local[*]")
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    builder = builder.config("spark.ui.showConsoleProgress", "true")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return spark
