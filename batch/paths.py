"""Paths as Spark's file systems see them (Hadoop `Path`s through py4j), for the job's checks,
its staging and rename, and the Arrow-file path's local reads and writes."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession


def jpath(spark: SparkSession, path: str) -> Any:
    """`path` as a Hadoop `Path` in the driver's JVM."""
    return spark._jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]


def filesystem(spark: SparkSession, path: str) -> Any:
    """The Hadoop file system that holds `path` (local, HDFS, S3, ...)."""
    return jpath(spark, path).getFileSystem(spark._jsc.hadoopConfiguration())


def qualified(spark: SparkSession, path: str) -> Any:
    """The URI Spark makes of `path`: with its scheme, against the default file system and the
    driver's working folder."""
    return filesystem(spark, path).makeQualified(jpath(spark, path)).toUri()
