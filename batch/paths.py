"""What the job asks of its Spark session, through the session's own API only (its
configuration, a DataFrame), so it works on classic Spark and Spark Connect alike: no
`sparkContext`, `_jvm` or `.rdd`. Files are `batch.storage`'s (pyarrow's file systems)."""

from __future__ import annotations

import os
import re

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.scoring import is_connect

_LOCAL = re.compile(r"local(?:\[(?P<threads>\*|\d+)(?:,\s*\d+)?\])?")


def master(spark: SparkSession) -> str:
    """The session's master URL (`local[2]`, `yarn`, `k8s://...`), '' when unknown."""
    try:
        return str(spark.conf.get("spark.master", "") or "")
    except Exception:  # a Connect server that will not say
        return ""


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def local(spark: SparkSession) -> bool:
    """Whether the executors run on this machine: local mode, and on Spark Connect a server on
    this machine (one elsewhere has its own local files)."""
    if not master(spark).startswith("local"):
        return False
    if not is_connect(spark):
        return True
    builder = getattr(getattr(spark, "client", None), "_builder", None)
    return str(getattr(builder, "host", "") or "").lower() in LOOPBACK


def parallelism(spark: SparkSession) -> int:
    """How many tasks the cluster runs at once (Spark's default parallelism): configured, told
    by a local master, or counted from the partitions Spark gives a range."""
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    found = _LOCAL.fullmatch(master(spark))
    if found:
        threads = found["threads"]
        return (os.cpu_count() or 1) if threads == "*" else int(threads or 1)
    ids = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).distinct()
    return max(1, ids.count())
