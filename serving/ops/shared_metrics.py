"""Metrics of several worker processes, merged on every scrape.

Why: with `--workers N` uvicorn runs N processes behind one socket, and a scrape reaches one of
them. Each keeps its counters in memory (serving/ops/cheap_metrics.py: an observation is a bisect
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
when a new worker gets its process id. A scrape that finds files of processes that have exited
folds their counts into one file (`metrics-dead.json`) and removes them, so that a worker that
crashes over and over, or restarts by design, does not grow the folder and every scrape's
reading with it. Only files whose process had exited before they were read are folded (one
that exits later may still write its last values). A file whose process id was taken again,
by a new worker or any other process, or whose process has exited but is not reaped yet, is
left as it is: folding a live worker's file would count it twice. Folding holds an exclusive
lock on `.metrics.lock` in the folder, and a scrape's reading a shared one, so that no scrape
sees a file both folded and still there, or neither (a process that cannot open the lock
reads without it, and folds nothing). The folded file names the files it took in, before
they are removed: should the process stop in between, those left are not counted twice, and
the next folding removes them. Histogram sums are added exactly (`sum_parts`), so the folding
does not move a total by a bit.

The folder belongs to one server: `python -m serving` clears its `metrics-*.json` files at
start (a previous run's counts would add to this one's) and makes a temporary folder when none
is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson

from serving.ops.cheap_metrics import PeerValues, Values, add_counters, add_histograms, sum_parts

log = logging.getLogger("serving")
WORKER_FILE = re.compile(r"metrics-(\d+)-[0-9a-f]+\.(json|tmp)")
"""A worker's file (and a half-written one), named by its process id."""
FOLDED = "metrics-dead.json"
"""Dead workers' counts, folded into one file."""
FILE_NAME = re.compile(rf"{WORKER_FILE.pattern}|metrics-dead\.(json|tmp)")
"""Our files (and `LOCK`); nothing else in the folder is read or cleared."""
LOCK = ".metrics.lock"
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Far above a snapshot (a few KB for a handful of models)."""
MAX_SUM = 1e300
"""Above any sum of seconds or rows; `math.fsum` of a few such is still finite."""
MAX_SUM_PARTS = 64
"""`_exact` writes a sum in a handful of parts at most."""
ADD_COUNTS = {"counter": add_counters, "histogram": add_histograms}
"""How a dead worker's values join the folded ones, by kind (what a scrape does with a live
worker's); gauges are not kept."""
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
        self._fold_failed = False

    def write(self, families: dict[str, Values]) -> None:
        """Replace this process's file at once (a reader never sees half of it). One writer at
        a time: the caller holds a lock (a thread's; the folder's lock is not needed for a
        worker's own file, which only a folding that finds it dead removes)."""
        data = {"pid": self.pid, "started": self.started, "families": _jsonable(families)}
        _replace(self.file, data)

    def read_peers(self, schema: Schema) -> list[PeerValues]:
        """The other processes' last values, dead workers' folded ones among them. A file that
        does not fit `schema` (damaged, or not ours) is left out with one warning: it never
        fails a scrape. Dead workers' files found on the way are folded (module docstring)."""
        with self._lock(fcntl.LOCK_SH):
            folded = self._read_folded(schema)
            workers = self._read_workers(schema, folded)
        peers = [peer for _, peer in workers]
        if folded is not None:
            peers.append(PeerValues(pid=0, alive=False, families=folded.families))
            if any(_exited(path, peer) for path, peer in workers) or any(
                (self.folder / name).exists() for name in folded.names
            ):
                self._fold(schema)
        return peers

    def _read_workers(
        self, schema: Schema, folded: _Folded | None, paths: list[Path] | None = None
    ) -> list[tuple[Path, PeerValues]]:
        """Every other worker's file that is not folded yet (or those of `paths`), with its
        values."""
        if paths is None:
            try:
                paths = sorted(self.folder.iterdir())
            except OSError as e:
                log.warning("metrics folder %s is unreadable, left out: %s", self.folder, e)
                return []
        files: list[tuple[Path, float, PeerValues]] = []
        for path in paths:
            if path == self.file or path.suffix != ".json" or not WORKER_FILE.fullmatch(path.name):
                continue  # ours, a write under way (.tmp), folded, or not a worker's file
            if folded is not None and path.name in folded.names:
                continue  # folded, its removal interrupted: counted in the folded file
            try:
                files.append((path, *_parse(orjson.loads(_read_regular(path)), schema)))
            except FileNotFoundError:
                continue  # cleared while we listed the folder
            except Exception as e:  # any damage at all: this file only is left out
                self._warn(path, e)
        # a process id now in use belongs to the newest file that has it (and to this process)
        newest: dict[int, float] = {self.pid: self.started}
        for _, started, peer in files:
            newest[peer.pid] = max(newest.get(peer.pid, started), started)
        return [
            (path, PeerValues(peer.pid, peer.alive and newest[peer.pid] == started, peer.families))
            for path, started, peer in files
        ]

    def _read_folded(self, schema: Schema) -> _Folded | None:
        """What dead workers left, folded; None when that file is damaged (then nothing more
        is folded into it, so that no more is lost)."""
        path = self.folder / FOLDED
        try:
            data = orjson.loads(_read_regular(path))
            names = data["merged"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"merged: {names!r} are not file names")
            return _Folded(frozenset(names), _families(data, schema))
        except FileNotFoundError:
            return _Folded(frozenset(), {})
        except Exception as e:
            self._warn(path, e)
            return None

    def _fold(self, schema: Schema) -> None:
        """Fold the dead workers' files into one and remove them; skipped while another
        process holds the lock (it folds or reads), and never fails a scrape."""
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
            if not held:
                return
            try:
                folded = self._read_folded(schema)  # again: another process may have folded
                if folded is None:
                    return
                exited = [  # before reading: a process that has exited writes no more
                    path
                    for path, pid in self._worker_files()
                    if path.suffix == ".json" and not pid_alive(pid)
                ]
                dead = [
                    (path, peer)
                    for path, peer in self._read_workers(schema, folded, exited)
                    if _exited(path, peer)
                ]
                leftover = [self.folder / n for n in folded.names if (self.folder / n).exists()]
                if not dead and not leftover:
                    return
                families = _fold_values(schema, folded, [peer for _, peer in dead])
                done = sorted({*leftover, *(path for path, _ in dead)})
                _replace(
                    self.folder / FOLDED,
                    {"merged": [path.name for path in done], "families": _jsonable(families)},
                )
                for path in done:  # only now that the folded file names them
                    path.unlink(missing_ok=True)
                for path, pid in self._worker_files():  # a dead worker's half-written one
                    if path.suffix == ".tmp" and not pid_alive(pid):
                        path.unlink(missing_ok=True)
            except Exception as e:  # a full disk, or a file damaged in a way reading let pass
                if not self._fold_failed:  # once: every scrape tries again
                    self._fold_failed = True
                    log.warning("could not fold dead workers' metrics in %s: %s", self.folder, e)

    def _worker_files(self) -> list[tuple[Path, int]]:
        """The workers' files (and half-written ones) with the process id in their name."""
        return [
            (path, pid) for path in self.folder.iterdir() if (pid := _pid_in_name(path)) is not None
        ]

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[bool]:
        """The folder's lock, shared or exclusive; yields whether it is held. Where it cannot
        be made (a folder read-only to us, no file descriptor left), reads go without it, and
        this process folds nothing."""
        try:
            fd = os.open(self.folder / LOCK, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, how)
            except OSError:  # taken, and asked not to wait
                yield False
                return
            yield True
        finally:
            os.close(fd)  # and with it the lock

    def _warn(self, path: Path, error: Exception) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning("metrics file %s is unreadable, left out of scrapes: %s", path, error)


@dataclass(frozen=True)
class _Folded:
    names: frozenset[str]
    """The workers' files taken in (the last folding's: their removal may have been cut)."""
    families: dict[str, Values]


def _fold_values(schema: Schema, folded: _Folded, dead: list[PeerValues]) -> dict[str, Values]:
    """The folded values with the dead workers' added: counters and histograms as a scrape
    adds them, histogram sums then made exact and few; no gauges (live processes only)."""
    families = {name: dict(values) for name, values in folded.families.items()}
    for peer in dead:
        for name, values in peer.families.items():
            add = ADD_COUNTS.get(schema[name][0])
            if add is not None:
                add(families.setdefault(name, {}), values)
    for name, values in families.items():
        if schema[name][0] == "histogram":
            for labels, (counts, total) in values.items():
                values[labels] = [counts, _exact(sum_parts(total))]
    return families


def _exact(parts: list[float]) -> list[float]:
    """Fewer floats (most often one) whose sum is exactly that of `parts`, for the folded
    file: one float would be rounded, and the total a scrape shows could then drop a hair after
    a folding (`sum_parts`). Counters need nothing of the kind: they count whole requests."""
    rest = sum(map(Fraction, parts), Fraction(0))
    exact: list[float] = []
    while rest:
        part = float(rest)
        exact.append(part)
        rest -= Fraction(part)
    return exact


def _jsonable(families: Mapping[str, Values]) -> dict[str, list[list[Any]]]:
    return {
        name: [[list(labels), value] for labels, value in values.items()]
        for name, values in families.items()
    }


def _replace(path: Path, data: dict[str, Any]) -> None:
    """Write a file at once: a reader never sees half of it."""
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(data))
    os.replace(partial, path)


def _pid_in_name(path: Path) -> int | None:
    match = WORKER_FILE.fullmatch(path.name)
    return None if match is None else int(match[1])


def _exited(path: Path, peer: PeerValues) -> bool:
    """Whether a worker's file is one that folding takes: its process, named in the file's
    name and in the file, has exited."""
    pid = _pid_in_name(path)
    return pid == peer.pid and not pid_alive(pid)


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
    return started, PeerValues(pid=pid, alive=pid_alive(pid), families=_families(data, schema))


def _families(data: Any, schema: Schema) -> dict[str, Values]:
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
    return families


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
    if isinstance(total, list):  # the folded file's exact parts (`_exact`: a few)
        if len(total) > MAX_SUM_PARTS:
            raise ValueError(f"{name}: a sum in {len(total)} parts")
        return [list(counts), [_sum_part(name, part) for part in total]]
    return [list(counts), _sum_part(name, total)]


def _sum_part(name: str, value: Any) -> float:
    """A histogram's sum, or part of one: far enough from overflow to be added exactly
    (`math.fsum` overflows near 1.8e308)."""
    number = _number(name, value)
    if abs(number) > MAX_SUM:
        raise ValueError(f"{name}: a sum of {value!r}")
    return number


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
            if FILE_NAME.fullmatch(path.name) or path.name == LOCK:
                path.unlink(missing_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"metrics folder {folder} cannot be used: {e.strerror or e}") from None
