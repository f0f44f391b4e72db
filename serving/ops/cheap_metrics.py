"""What prometheus_client does not do cheaply enough: a histogram for the hot path, and worker
processes sharing their values without a file write per observation.

Everything else is prometheus_client's: counters and gauges, the text exposition, the
multiprocess file format, and the collector that merges those files. Why these two parts are
our own is measured in bench/RESULTS.md ("Metrics: hand-written against prometheus_client"):
prometheus_client's `Histogram.observe` walks its buckets in Python and takes a lock for each
of two increments, and its multiprocess mode writes every observation to a memory-mapped file.
Here an observation is a bisect and two additions under one uncontended lock (observations
come from the event loop and from the executor's threads, so the lock stays).

With `--workers N` uvicorn runs N processes behind one socket, and a scrape reaches one of
them. Each worker copies all its values (its registry: our histograms and prometheus_client's
counters and gauges) to prometheus_client's multiprocess files in the metrics folder every
`metrics_flush_s`, at every scrape it answers and when it stops; a scrape merges every file
with prometheus_client's `MultiProcessCollector.merge`. What a scrape sees is what
prometheus_client's multiprocess mode shows:
- counters and histograms: the sum over every worker that ran since the server started, the
  dead included (their files stay, as prometheus_client documents). Totals never go back,
  whichever worker answers: the answering worker writes its own files first, so all a scrape
  shows is on disk, and files are added in name order, so every worker adds the same floats
  the same way. A worker killed outright loses what it counted since its last write.
- gauges: live workers only (`livesum`: requests in flight; `livemax`: a model's load time);
  a scrape removes the gauge files of workers that have exited (`mark_process_dead`).
Files are named by process id and start time, so a new worker that gets a dead one's process
id does not overwrite its counts; a damaged file is left out with one warning, never failing a
scrape. `python -m serving` clears the folder's files at start (`prepare`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger("serving")
FILE = re.compile(r"(counter|histogram|gauge_live(?:sum|max))_(\d+)-([0-9a-f]{16})\.(db|tmp)")
"""A worker's file in prometheus_client's multiprocess format (`.tmp`: a write under way):
kind, process id, start time. Nothing else in the folder is read or cleared."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Far above a worker's values (a few KB for a handful of models)."""


class HistogramChild:
    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: list[float]):
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)  # buckets are "less than or equal"
        lock = self._lock
        lock.acquire()  # not `with`: it costs more than the rest, and nothing here can raise
        self._counts[index] += 1
        self._sum += value
        lock.release()

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class Histogram(Collector):
    """prometheus_client's `Histogram(name, doc, labelnames, buckets=..., registry=...)` with
    `labels(...).observe(value)`, exported the same way (less the optional `_created`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = sorted(float(b) for b in buckets)
        self._le = [str(floatToGoString(b)) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = HistogramChild(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for labels, child in children:
            counts, total = child.snapshot()
            buckets = list(zip(self._le, accumulate(counts), strict=True))
            family.add_metric(list(labels), buckets, total)
        yield family


class SharedMetrics(Collector):
    """One worker's files in the shared folder (`write`), and all workers' values merged
    (`collect`, through `registry`)."""

    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid
        self.process = f"{self.pid}-{time.time_ns():016x}"
        """This process in its files' names: its id, and when it started."""
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._warned: set[str] = set()

    def write(self, registry: CollectorRegistry, gauges: Mapping[str, str]) -> None:
        """Replace this process's files with the values of `registry`, each file at once (a
        reader never sees half of one); `gauges`: each gauge's `livesum` or `livemax`. One
        writer at a time: the caller holds a lock."""
        files: dict[str, list[tuple[str, float]]] = {}
        for metric in registry.collect():
            kind = f"gauge_{gauges[metric.name]}" if metric.type == "gauge" else metric.type
            files.setdefault(kind, []).extend(_entries(metric))
        for kind, entries in files.items():
            _replace(self.folder / f"{kind}_{self.process}.db", entries)

    def collect(self) -> Iterator[Metric]:
        """Every worker's values, merged as prometheus_client's multiprocess mode does."""
        self._forget_dead(self._files())
        readable = [str(path) for path in self._files() if self._readable(path)]
        return iter(MultiProcessCollector.merge(readable, accumulate=True))  # type: ignore[no-untyped-call]

    def _files(self) -> list[Path]:
        try:
            paths = sorted(self.folder.iterdir())  # the same order in every worker
        except OSError as e:
            self._warn(str(self.folder), f"metrics folder {self.folder} is unreadable: {e}")
            return []
        return [p for p in paths if (m := FILE.fullmatch(p.name)) is not None and m[4] == "db"]

    def _forget_dead(self, files: list[Path]) -> None:
        """Remove the gauge files of processes that have exited, or whose id a newer process
        has taken (`mark_process_dead`)."""
        newest: dict[int, str] = {}
        gauges = []
        for path in files:
            kind, pid, started, _ = FILE.fullmatch(path.name).groups()  # type: ignore[union-attr]
            if kind.startswith("gauge_"):
                gauges.append((int(pid), started))
                newest[int(pid)] = max(newest.get(int(pid), started), started)
        for pid, started in gauges:
            if started != newest[pid] or not pid_alive(pid):
                mark_process_dead(f"{pid}-{started}", str(self.folder))  # type: ignore[no-untyped-call]

    def _readable(self, path: Path) -> bool:
        """Whether a file reads as prometheus_client's format; warns once about one that
        does not (a pipe or device, which could block a scrape, included)."""
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise ValueError(f"{info.st_size} bytes, more than a worker's values can be")
            MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            return False  # a gauge file removed as its worker exited
        except Exception as e:  # any damage at all: this file only is left out
            self._warn(str(path), f"metrics file {path} is unreadable, left out of scrapes: {e}")
            return False
        return True

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _entries(metric: Metric) -> Iterator[tuple[str, float]]:
    """A metric's samples as prometheus_client's multiprocess files hold them: no `_created`,
    histograms without `_count` and with each bucket's own count (not cumulative)."""
    below: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in metric.samples:
        if sample.name in (f"{metric.name}_created", f"{metric.name}_count"):
            continue
        value = sample.value
        if sample.name == f"{metric.name}_bucket":
            others = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            value, below[others] = value - below.get(others, 0.0), value
        names, values = list(sample.labels), list(sample.labels.values())
        yield mmap_key(metric.name, sample.name, names, values, metric.documentation), value


def _replace(path: Path, entries: list[tuple[str, float]]) -> None:
    partial = path.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    values = MmapedDict(str(partial))  # type: ignore[no-untyped-call]
    try:
        for key, value in entries:
            values.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        values.close()  # type: ignore[no-untyped-call]
    os.replace(partial, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    except (OverflowError, ValueError):
        return False  # not a process id
    return True


def prepare(folder: Path) -> None:
    """Make the folder for a new server, clearing a previous run's files (ours only); a clear
    error when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if FILE.fullmatch(path.name):
                path.unlink(missing_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"metrics folder {folder} cannot be used: {e.strerror or e}") from None
