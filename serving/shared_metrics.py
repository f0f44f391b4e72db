"""Metrics of several worker processes, merged on every scrape.

Why: with `--workers N` uvicorn runs N processes behind one socket, and a scrape reaches one of
them. Each keeps its counters in memory (serving/cheap_metrics.py: an observation is a bisect
and two additions), so a scrape would see one process's share, a different one each time.
prometheus_client's multiprocess mode writes every observation to a memory-mapped file instead:
2.6 µs a histogram observation, against 1.6 µs for all of a request's observations here (a
counter and three histograms; timeit, 2-CPU VM, 2026-11-23). Here each process
copies its values to a file of its own every `metrics_flush_s` (1 s) and when it stops, and the
process that answers a scrape adds the others' files to its own live values.

What a scrape sees, as with prometheus_client's multiprocess mode:
- counters and histograms: the sum over every process that ran since the server started, the
  dead included, so totals never go back when a worker restarts. Another process's last
  `metrics_flush_s` may be missing from one scrape; the next one has it.
- gauges: live processes only; requests in flight summed, a model's load time the longest.

The folder belongs to one server: `python -m serving` clears its `metrics-*.json` files at
start (a previous run's counts would add to this one's) and makes a temporary folder when none
is set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

from serving.cheap_metrics import PeerValues, Values

log = logging.getLogger("serving")
PATTERN = "metrics-*.json"


class SharedMetrics:
    """One process's file in the shared folder, and the reading of the others'."""

    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid
        self.file = folder / f"metrics-{self.pid}.json"
        self._warned: set[Path] = set()

    def write(self, families: dict[str, Values]) -> None:
        """Replace this process's file at once (a reader never sees half of it)."""
        data = {
            "pid": self.pid,
            "families": {
                name: [[list(labels), value] for labels, value in values.items()]
                for name, values in families.items()
            },
        }
        partial = self.file.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(data))
        os.replace(partial, self.file)

    def read_peers(self) -> list[PeerValues]:
        """The other processes' last values; an unreadable file is skipped with a warning."""
        peers = []
        for path in sorted(self.folder.glob(PATTERN)):
            if path == self.file:
                continue
            try:
                peers.append(_parse(orjson.loads(path.read_bytes())))
            except FileNotFoundError:
                continue  # cleared while we listed the folder
            except (OSError, ValueError, TypeError, KeyError) as e:
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("metrics file %s is unreadable, left out of scrapes: %s", path, e)
        return peers


def _parse(data: Any) -> PeerValues:
    """A file's values, checked to be numbers or histograms, so that a damaged file fails
    here (left out, with a warning) and never in the middle of a scrape."""
    pid = int(data["pid"])
    families: dict[str, Values] = {
        str(name): {tuple(str(v) for v in labels): _value(value) for labels, value in values}
        for name, values in data["families"].items()
    }
    return PeerValues(pid=pid, alive=pid_alive(pid), families=families)


def _value(value: Any) -> Any:
    """A counter's or gauge's number, or a histogram's `[counts, sum]`."""
    if isinstance(value, list):
        counts, total = value
        return [[int(c) for c in counts], float(total)]
    return float(value)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def prepare(folder: Path) -> None:
    """Make the folder for a new server, clearing a previous run's files; a clear error when
    it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in [*folder.glob(PATTERN), *folder.glob("metrics-*.tmp")]:
            path.unlink(missing_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"metrics folder {folder} cannot be used: {e.strerror or e}") from None
