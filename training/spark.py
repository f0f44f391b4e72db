"""The Spark session for training: the active one, or `local[*]` unless a master is given or
spark-submit already chose one. Python workers use the driver's interpreter unless told
otherwise, so that they import the same torch and `training` (on a cluster, install the package
where executors run, or ship it with `--py-files`).

pyspark is imported here lazily: plain `python -m training` never needs it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

P = ParamSpec("P")
T = TypeVar("T")

MISSING = "training on Spark needs pyspark: pip install 'onnx-bundle-serving[train,batch]'"


MASTER = re.compile(
    r"local(\[(\*|[1-9]\d*)(,\s*[1-9]\d*)?\])?|local-cluster\[[\d, ]+\]|yarn|(spark|k8s)://\S+"
)
"""The master URLs Spark 4 accepts (Mesos is gone)."""


class SparkUnavailable(Exception):
    """Spark cannot start: pyspark is not installed, or the JVM or the master refused."""


def check_master(master: str) -> None:
    """A master Spark would refuse, refused before the JVM starts (which would print a Java
    stack trace first)."""
    if not MASTER.fullmatch(master):
        raise ValueError(
            "--master: expected local, local[N], local[*], yarn, spark://HOST:PORT or "
            f"k8s://https://HOST:PORT; got {master!r}"
        )


def spark_session(
    master: str | None = None, app_name: str = "training", remote: str | None = None
) -> SparkSession:
    """A classic session on `master`, or a Spark Connect session on `remote` (`sc://host:port`,
    or `local[N]` for the pyspark wheel's own Connect server)."""
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(MISSING) from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if remote is not None:
        try:
            return SparkSession.builder.remote(remote).getOrCreate()
        except Exception as e:  # no Connect client packages, or no server there
            raise SparkUnavailable(
                f"Spark Connect at {remote} did not answer: {error_line(e)}"
            ) from e
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit
        builder = builder.master("local[*]")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    try:
        spark = builder.getOrCreate()
    except (PySparkException, Py4JJavaError) as e:  # no Java, or the JVM refused the master
        where = f" with master {master}" if master else ""
        raise SparkUnavailable(f"Spark did not start{where}: {error_line(e)}") from e
    spark.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return spark


ERROR_CLASS = re.compile(r"\S+: \[[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*\]")
"""A JVM exception's first line that names Spark's error class (`...: [FAILED_READ_FILE...]`)."""


def error_line(error: Exception) -> str:
    """The first line of a Spark error: for a Py4J error, the JVM exception's, not the call's;
    the first exception in its cause chain that names an error class, where one does (Spark 4.1
    wraps a failed schema-inference job's error in a plain "Job aborted")."""
    java = getattr(error, "java_exception", None)
    if java is None:
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    first, cause = "", java
    for _ in range(8):
        if cause is None:
            break
        line = (str(cause).strip().splitlines() or [""])[0]
        first = first or line
        if ERROR_CLASS.match(line):
            return line
        cause = cause.getCause()
    return first or type(error).__name__


def worker_error(error: Exception) -> str:
    """The useful line of a Spark task's error (Python's last traceback line), not the JVM dump."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    python_errors = [
        line
        for line in lines
        if ": " in line and line.split(":")[0].endswith(("Error", "Exception"))
    ]
    return (python_errors or lines or [type(error).__name__])[-1][:500]


def active_session() -> SparkSession:
    """The session this process already runs, or a new one."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(MISSING) from e
    return SparkSession.getActiveSession() or spark_session()


def master_of(spark: SparkSession) -> str:
    """The session's master, from its conf (a Spark Connect session has no SparkContext)."""
    return str(spark.conf.get("spark.master", "") or "")


def task_slots(spark: SparkSession) -> int | None:
    """How many tasks can run at once, when Spark runs locally (`local[N]`); None on a cluster,
    where executors may still be coming."""
    local = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master_of(spark))
    if local is None:
        return None
    cores = local.group(1) or "1"
    return os.cpu_count() or 1 if cores == "*" else int(cores)


class TaggedJobs:
    """Spark jobs that helper threads submit under one tag, so they can be cancelled together.

    The driver's main thread submits no job itself: it waits on the helper threads. That keeps
    Ctrl-C clean. pyspark's SIGINT handler cancels every job and raises KeyboardInterrupt, but
    when the main thread is blocked in a JVM call of its own, the handler's call collides with
    it and Py4J logs a burst of tracebacks. `cancel` also covers an exit by any other error, and
    a session whose handler is not installed (created outside the main thread).
    """

    def __init__(self, spark: SparkSession):
        self.spark = spark  # session tags: on classic sessions and Spark Connect alike
        self.tag = f"training-{uuid.uuid4().hex}"
        self.cancelled = threading.Event()

    def tagged(self, work: Callable[P, T]) -> Callable[P, T]:
        """`work`, run in a helper thread, with its Spark jobs under this tag."""

        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            if self.cancelled.is_set():
                raise RuntimeError("cancelled before it started")
            self.spark.addTag(self.tag)  # a thread-local property of the jobs it submits
            try:
                return work(*args, **kwargs)
            finally:
                self.spark.removeTag(self.tag)

        return run

    def cancel(self) -> None:
        self.cancelled.set()
        self.spark.interruptTag(self.tag)
