"""The Spark session for training: the active one, or `local[*]` unless a master is given or
spark-submit already chose one. Python workers use the driver's interpreter unless told
otherwise, so that they import the same torch and `training` (on a cluster, install the package
where executors run, or ship it with `--py-files`).

pyspark is imported here lazily: plain `python -m training` never needs it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MISSING = "training on Spark needs pyspark: pip install 'onnx-bundle-serving[train,batch]'"


class SparkUnavailable(Exception):
    """pyspark is not installed."""


def spark_session(master: str | None = None, app_name: str = "training") -> SparkSession:
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(MISSING) from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit
        builder = builder.master("local[*]")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return spark


def active_session() -> SparkSession:
    """The session this process already runs, or a new one."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(MISSING) from e
    return SparkSession.getActiveSession() or spark_session()


def task_slots(spark: SparkSession) -> int | None:
    """How many tasks can run at once, when Spark runs locally (`local[N]`); None on a cluster,
    where executors may still be coming."""
    master = spark.sparkContext.master or ""
    if master == "local" or master.startswith("local["):
        return int(spark.sparkContext.defaultParallelism)
    return None
