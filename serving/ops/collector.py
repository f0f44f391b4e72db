"""The cyclic garbage collector, kept out of the way of a process that serves.

CPython frees a request's objects by reference counting as soon as it is answered; the cyclic
collector is there for reference cycles only, yet its full collections walk every container
object of the process. A loaded server holds ~80k (FastAPI, pydantic, onnxruntime's and
numpy's Python objects, the models' metadata), and each full collection held the event loop
for 25-48 ms. Under load one came every 1-2 s: what survives two young collections counts
towards the next full one, and the objects of the requests in flight do survive them, freed
by reference counting soon after. Every request in flight waited out the pause, and that was
the p99 at 64 clients (side_effects: 31 ms against a p50 of 5; the wide model batched: 38
against 8; bench/RESULTS.md).

So, where the service owns its process (`python -m serving`, `create_app_from_env`):
- Once the models are loaded and warm, after each load or unload through the repository API,
  and when a stopped app starts again, `settle` collects once and moves every object left to
  the permanent generation (`gc.freeze()`), which collections skip: a full collection then
  walks only what came since (0.3-1 ms measured). Each settle unfreezes first, so garbage
  frozen by the one before (an unloaded model's cycles, were there any) is collected.
- The youngest generation's threshold goes from 700 to 5,000 net new container objects. At
  700 the objects of 64 requests in flight set off a young collection every few
  milliseconds (4.6 µs a request on the wide model batched); at 5,000 none ran under that
  load.

It costs one full collection (~40 ms, the event loop held) before the ready probe turns true
and at each repository change; and cyclic garbage made while serving waits longer, with
what it holds, for a young collection (a failed run's exception holds its batch's rows in
one). The collector is the process's: `create_app` alone leaves it as it is, and where
several apps that own it run in one process (tests), the first to start sets it and the
last to stop gives it back.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import ClassVar

log = logging.getLogger("serving")

YOUNG_THRESHOLD = 5_000
"""Net new container objects (allocations less deallocations) before a young collection."""


class ServerCollector:
    """Sets the process's collector while an app that owns the process runs."""

    _running: ClassVar[int] = 0
    """Started and not yet stopped, in this process."""
    _previous: ClassVar[tuple[int, int, int]] = gc.get_threshold()
    """The thresholds before the first of them started."""

    def __init__(self) -> None:
        self._started = False

    def start(self) -> None:
        """Set the thresholds (from the app's lifespan); settling comes once models load."""
        if self._started:
            return
        self._started = True
        if ServerCollector._running == 0:
            ServerCollector._previous = gc.get_threshold()
        ServerCollector._running += 1
        gc.set_threshold(YOUNG_THRESHOLD, *ServerCollector._previous[1:])

    def settle(self) -> None:
        """Collect once, then leave everything alive now out of later collections: the
        server's long-lived state (call it when that has changed)."""
        start = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info(
            "garbage collector settled in %.0f ms: %d objects left out of later collections",
            (time.perf_counter() - start) * 1e3,
            gc.get_freeze_count(),
        )

    def stop(self) -> None:
        """Give the collector back as it was found, once the last app that set it stops."""
        if not self._started:
            return
        self._started = False
        ServerCollector._running -= 1
        if ServerCollector._running == 0:
            gc.unfreeze()
            gc.set_threshold(*ServerCollector._previous)
