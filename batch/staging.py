"""The staging folder a run writes before renaming its result into place, and what the next run
does with one that a killed run left behind.

A staging folder is named `<output>.tmp-<pid>-<host>-<random>`: the driver's process id and
host say whose it is. Before writing, a run looks at the staging folders beside its (local)
output: one of a process of this host that no longer runs is removed, with a warning; one of a
live process is another run writing the same output now, and the run refuses to race it; one
of another host (or of an older release, without the pid) is reported and left alone, since
only that host can tell whether its run is alive.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from batch.errors import JobError

log = logging.getLogger("batch")
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_NAME = re.compile(r"\.tmp-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]+)-[0-9a-f]{12}$")


def staging_path(output_path: str) -> str:
    """A fresh staging folder beside `output_path`, named for this process."""
    return f"{output_path.rstrip('/')}.tmp-{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Leftover:
    folder: Path
    pid: int | None
    host: str | None

    @property
    def ours(self) -> bool:
        """Made by a process of this host (so whether it runs can be asked)."""
        return self.host == _HOST and self.pid is not None


def leftovers(output: Path) -> list[Leftover]:
    """The staging folders beside the local `output`, whoever made them."""
    parent = output.parent
    try:
        entries = sorted(parent.glob(f"{_escaped(output.name)}.tmp-*"))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _NAME.search(entry.name[len(output.name) :])
        pid = int(match["pid"]) if match else None
        found.append(Leftover(entry, pid, match["host"] if match else None))
    return found


def clean_stale(output: Path) -> None:
    """Remove what killed runs of this host left beside `output`; refuse when a live run is
    writing the same output; report (and keep) what other hosts left."""
    for leftover in leftovers(output):
        if not leftover.ours:
            log.warning(
                "%s was left by a run on %s; remove it if no run there writes %s",
                leftover.folder,
                leftover.host or "an unknown host",
                output,
            )
        elif _alive(leftover.pid):
            raise JobError(
                f"another run (process {leftover.pid}) is writing {output} now (staging "
                f"{leftover.folder}); wait for it, or remove that folder if no such run exists"
            )
        else:
            log.warning(
                "removing %s, left by a run (process %d) that no longer runs",
                leftover.folder,
                leftover.pid,
            )
            shutil.rmtree(leftover.folder, ignore_errors=True)
            if leftover.folder.exists():
                log.warning("could not remove %s; remove it by hand", leftover.folder)


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
