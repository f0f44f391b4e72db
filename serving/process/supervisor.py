"""A worker process stops when the process that supervises it dies.

Why: uvicorn's supervisor (`--workers N`) stops its workers when it is asked to stop, but if it
is killed outright (SIGKILL, the out-of-memory killer) its workers live on, orphaned: they keep
their models in memory and keep listening on the port, so a new server on that port is refused
and the orphans answer whatever connects. A worker started by `multiprocessing` (as uvicorn's
are) holds a pipe that closes when its parent exits; a thread that waits on it sends the worker
SIGTERM, and uvicorn stops it as for any SIGTERM: it drains the requests in flight first.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading

log = logging.getLogger("serving")


def stop_with_supervisor() -> bool:
    """Watch the parent, where this process is a `multiprocessing` child; whether it is one."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False

    def watch() -> None:
        parent.join()  # returns once the parent's end of the pipe closes: it has exited
        log.warning("the supervising process %s has gone: this worker stops", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    return True
