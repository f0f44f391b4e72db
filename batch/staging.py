"""The staging folder a run writes before renaming its result into place, and what the next run
does with one that a killed run left behind.

A staging folder is named `<output>.tmp-<pid>-<host>-<random>`: the driver's process id and
host say whose it is. Before writing, a run looks at the staging folders beside its output
(local or in a store): one of a process of this host that no longer runs is removed, with a
warning; one of a live process is another run writing the same output now, and the run
refuses to race it; one of another host (or of an older release, without the pid) is
reported and left alone, since only that host can tell whether its run is alive.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import socket
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from batch import storage
from batch.errors import JobError
from batch.storage import Location

log = logging.getLogger("batch")
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_NAME = re.compile(r"\.tmp-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]+)-[0-9a-f]{12}$")


def staging_path(output_path: str) -> str:
    """A fresh staging folder beside `output_path`, named for this process."""
    return f"{output_path.rstrip('/')}.tmp-{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Leftover:
    folder: Location
    pid: int | None
    host: str | None

    @property
    def ours(self) -> bool:
        """Made by a process of this host (so whether it runs can be asked)."""
        return self.host == _HOST and self.pid is not None


def leftovers(output: Location) -> list[Leftover]:
    """The staging folders beside `output`, whoever made them."""
    name = posixpath.basename(output.path.rstrip("/"))
    parent = Location(output.uri, output.fs, posixpath.dirname(output.path.rstrip("/")))
    try:
        entries = storage.entries(parent)
    except (OSError, JobError):
        return []
    found = []
    for entry in entries:
        if entry.type != pafs.FileType.Directory or not entry.base_name.startswith(f"{name}.tmp-"):
            continue
        match = _NAME.search(entry.base_name[len(name) :])
        uri = entry.path if not output.remote else output.sibling(entry.base_name).uri
        folder = Location(uri, output.fs, entry.path)
        found.append(Leftover(folder, int(match["pid"]) if match else None, _host(match)))
    return found


def _host(match: re.Match[str] | None) -> str | None:
    return match["host"] if match else None


def clean_stale(output: Location) -> None:
    """Remove what killed runs of this host left beside `output`; refuse when a live run is
    writing the same output; report (and keep) what other hosts left."""
    for leftover in leftovers(output):
        where = leftover.folder.uri
        if not leftover.ours:
            log.warning(
                "%s was left by a run on %s; remove it if no run there writes %s",
                where,
                leftover.host or "an unknown host",
                output.uri,
            )
        elif _alive(leftover.pid):
            raise JobError(
                f"another run (process {leftover.pid}) is writing {output.uri} now (staging "
                f"{where}); wait for it, or remove that folder if no such run exists"
            )
        else:
            log.warning(
                "removing %s, left by a run (process %d) that no longer runs", where, leftover.pid
            )
            try:
                storage.delete(leftover.folder)
            except JobError:
                log.warning("could not remove %s; remove it by hand", where)


def _alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _escaped(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)
