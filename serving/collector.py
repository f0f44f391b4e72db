"""The cyclic garbage collector, kept out of the way of a process that serves.

CPython frees a request's objects by reference counting as soon as it is answered; the cyclic
collector is there for reference cycles only, yet its full collections walk every container
object of the process. A loaded server holds ~80k (FastAPI, pydantic, onnxruntime's and
numpy's Python objects, the models' metadata), and each full collection held the event loop
for 30-45 ms. Under load one came every 1-2 s: what survives two young collections counts
towards the next full one, and the objects of the requests in flight do survive them, freed
by reference counting soon after. Every request in flight waited out the pause, and that was
the p99 at 64 clients: 31 ms against a p50 of 5 (side_effects), 38 against 8 (the wide
model, batched); see bench/RESULTS.md.

So, where the service owns its process (`python -m serving`, `create_app_from_env`):
- Once the models are loaded and warm, and again after each load or unload through the
  repository API, `settle` collects once and moves every object left to the permanent
  generation (`gc.freeze()`), which collections skip: a full collection then walks only what
  came since (0.3-1 ms measured instead of 30-45). Each settle unfreezes first, so garbage
  frozen by the one before (an unloaded model's cycles, were there any) is collected.
- The youngest generation's threshold goes from 700 to 20,000 net new container objects. At
  700 the objects of 64 requests in flight set off a young collection every few
  milliseconds, 4.6 µs a request on the wide model batched; at 5,000 and above none ran under
  that load.

It costs one full collection (~40 ms) before the ready probe turns true and at each
repository change, and cyclic garbage made while serving waits for a larger young generation
(at most ~20,000 objects, a few MB). A library user's process (`create_app` alone) keeps its
collector as it was.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("serving")

YOUNG_THRESHOLD = 20_000
"""Net new container objects (allocations less deallocations) before a young collection."""


class ServerCollector:
    """Sets the process's collector while the service runs; `stop` gives back what it found."""

    def __init__(self, young_threshold: int = YOUNG_THRESHOLD):
        self.young_threshold = young_threshold
        self._previous: tuple[int, int, int] | None = None

    def start(self) -> None:
        if self._previous is None:
            self._previous = gc.get_threshold()
        gc.set_threshold(self.young_threshold, *self._previous[1:])

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
        gc.unfreeze()
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
