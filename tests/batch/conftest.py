"""One real Spark session (`local[2]`) for the whole batch test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from batch.session import spark_session


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = spark_session("local[2]", app_name="tests")
    session.conf.set("spark.sql.shuffle.partitions", "4")
    yield session
    session.stop()
