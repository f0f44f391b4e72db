"""The Spark session for a scoring job: a Spark Connect session when a remote is given
(`--remote sc://host:port`, or `SPARK_REMOTE`), else a classic one, `local[*]` unless a master
is given or spark-submit already chose one; Python workers use the driver's interpreter unless
told otherwise."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

ARROW_BATCH_ROWS = 10_000


def spark_session(
    master: str | None = None, app_name: str = "bundle-scoring", remote: str | None = None
) -> SparkSession:
    # Workers must import pyarrow, onnxruntime and `inference`: the driver's interpreter has them.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    remote = remote or os.environ.get("SPARK_REMOTE")
    if remote:
        return _connect(remote, app_name)
    builder = SparkSession.builder.appName(app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this process
    if master is not None:
        builder = builder.master(master)
    elif not under_submit:
        builder = builder.master("local[*]")
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    builder = builder.config("spark.ui.showConsoleProgress", "true")
    builder = builder.config("spark.log.level", os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return builder.getOrCreate()


def _connect(remote: str, app_name: str) -> SparkSession:
    """A Spark Connect session; the server's own settings stand, except the Arrow batch size,
    a session setting."""
    spark = SparkSession.builder.remote(remote).appName(app_name).getOrCreate()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    return spark
