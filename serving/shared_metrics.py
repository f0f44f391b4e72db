"""Metrics of several worker processes, merged on every scrape.

Why: with `--workers N` uvicorn runs N processes behind one socket, and a scrape reaches one of
them. Each keeps its counters in memory (serving/cheap_metrics.py: an observation is a bisect
and two additions), so a scrape would see one process's share, a different one each time.
prometheus_client's multiprocess mode writes every observation to a memory-mapped file instead:
2.6 µs a histogram observation, against 1.6 µs for all of a request's observations here (a
counter and three histograms; timeit, 2-CPU VM, 2026-11-23). Here each process
copies its values to a file of its own every `metrics_flush_s` (1 s) and when it stops, and the
process that answers a scrape writes its own file first, then adds the others' files to what it
wrote.

What a scrape sees, as with prometheus_client's multiprocess mode:
- counters and histograms: the sum over every process that ran since the server started, the
  dead included. Totals never go back, whichever worker answers: every value a scrape shows
  is on disk before it is shown. Another process's last `metrics_flush_s` may be missing from
  one scrape and show in a later one; a worker killed outright loses its counts since its
  last write that no scrape had shown yet (prometheus_client's mode writes each observation).
- gauges: live processes only; requests in flight summed, a model's load time the longest.

Files are named by process id and a random token, so that a dead worker's file stays its own
when a new worker gets its process id. Each dead worker leaves a file that every scrape reads
(a few KB); a worker that crashes over and over grows the folder until the server restarts.

The folder belongs to one server: `python -m serving` clears its `metrics-*.json` files at
start (a previous run's counts would add to this one's) and makes a temporary folder when none
is set.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from serving.cheap_metrics import PeerValues, Values

log = logging.getLogger("serving")
FILE_NAME = re.compile(r"metrics-\d+-[0-9a-f]+\.(json|tmp)")
"""Our files (and half-written ones); nothing else in the folder is read or cleared."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Far above a snapshot (a few KB for a handful of models)."""
Schema = Mapping[str, tuple[str, int, int]]
"""Family name → (kind, number of labels, counts per histogram value or 0), to check files."""


class SharedMetrics:
    """One process's file in the shared folder, and the reading of the others'."""

    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid
        self.started = time.time()
        self.file = folder / f"metrics-{self.pid}-{secrets.token_hex(4)}.json"
        self._warned: set[Path] = set()

    def write(self, families: dict[str, Values]) -> None:
        """Replace this process's file at once (a reader never sees half of it). One writer at
        a time: the caller holds a lock."""
        data = {
            "pid": self.pid,
            "started": self.started,
            "families": {
                name: [[list(labels), value] for labels, value in values.items()]
                for name, values in families.items()
            },
        }
        partial = self.file.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(data))
        os.replace(partial, self.file)

    def read_peers(self, schema: Schema) -> list[PeerValues]:
        """The other processes' last values. A file that does not fit `schema` (damaged, or
        not ours) is left out with one warning: it never fails a scrape."""
        peers: list[tuple[float, PeerValues]] = []
        try:
            paths = sorted(self.folder.iterdir())
        except OSError as e:
            log.warning("metrics folder %s is unreadable, left out: %s", self.folder, e)
            return []
        for path in paths:
            if path == self.file or path.suffix != ".json" or not FILE_NAME.fullmatch(path.name):
                continue  # ours, a write under way (.tmp), or not a metrics file
            try:
                peers.append(_parse(orjson.loads(_read_regular(path)), schema))
            except FileNotFoundError:
                continue  # cleared while we listed the folder
            except Exception as e:  # any damage at all: this file only is left out
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("metrics file %s is unreadable, left out of scrapes: %s", path, e)
        # a process id now in use belongs to the newest file that has it (and to this process)
        newest: dict[int, float] = {self.pid: self.started}
        for started, peer in peers:
            newest[peer.pid] = max(newest.get(peer.pid, started), started)
        return [
            PeerValues(peer.pid, peer.alive and newest[peer.pid] == started, peer.families)
            for started, peer in peers
        ]


def _read_regular(path: Path) -> bytes:
    """A plain file's bytes; a pipe or device (which could block a scrape or fill the memory)
    or a file far larger than any snapshot is refused."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{info.st_size} bytes, more than a snapshot can be")
    return path.read_bytes()


def _parse(data: Any, schema: Schema) -> tuple[float, PeerValues]:
    pid, started = int(data["pid"]), float(data["started"])
    families: dict[str, Values] = {}
    for name, entries in dict(data["families"]).items():
        if name not in schema:
            continue  # a family this version does not have
        kind, labels_wanted, buckets = schema[name]
        values: Values = {}
        for labels, value in entries:
            if not isinstance(labels, list) or len(labels) != labels_wanted:
                raise ValueError(f"{name}: labels {labels!r} do not fit")
            values[tuple(str(v) for v in labels)] = _value(name, kind, buckets, value)
        families[name] = values
    return started, PeerValues(pid=pid, alive=pid_alive(pid), families=families)


def _value(name: str, kind: str, buckets: int, value: Any) -> Any:
    """A counter's or gauge's number, or a histogram's `[counts, sum]` with its buckets."""
    if kind != "histogram":
        number = _number(name, value)
        if kind == "counter" and number < 0:
            raise ValueError(f"{name}: a count of {value!r}")
        return number
    counts, total = value
    if len(counts) != buckets or not all(type(c) is int and c >= 0 for c in counts):
        raise ValueError(f"{name}: {counts!r} are not {buckets} bucket counts")
    return [list(counts), _number(name, total)]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    return float(value)


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
            if FILE_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"metrics folder {folder} cannot be used: {e.strerror or e}") from None
