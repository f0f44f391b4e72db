"""The request timeout, one mechanism for every inference that leaves the event loop: a run in
the executor (`DataPlane`) and a request queued for a merged run (`Batcher`).

Every pending answer is a future with a deadline, and one timer for all of them fires at the
oldest deadline, fails the futures whose time is up with `InferenceTimeout` (504), and re-arms
for the next. One timer, not one per request: a timer handle per request (`asyncio.timeout`)
costs more than a small model's run. With one timeout for all, deadlines come in the order the
futures do, so the pending ones are a queue. A run that times out keeps its thread until it
ends (a session run cannot be interrupted); its answer is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from serving.core.errors import InferenceTimeout


class Deadlines:
    """The pending answers of one data plane, each failed `timeout_s` after it was watched
    unless answered before. Used from the event loop only."""

    __slots__ = ("_pending", "_timer", "timeout_s")

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._pending: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[Any]) -> None:
        """Fail `future` with `InferenceTimeout` `timeout_s` from now unless it is done first."""
        pending = self._pending
        while pending and pending[0][1].done():  # answered: no longer held here
            pending.popleft()
        pending.append((time.perf_counter() + self.timeout_s, future))
        if self._timer is None:
            self._arm(future.get_loop())

    def __len__(self) -> int:
        return len(self._pending)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending
        while pending and pending[0][1].done():
            pending.popleft()
        if pending:
            wait = max(0.0, pending[0][0] - time.perf_counter())
            self._timer = loop.call_later(wait, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = time.perf_counter()
        pending = self._pending
        while pending and (pending[0][0] <= now or pending[0][1].done()):
            _, future = pending.popleft()
            if not future.done():
                future.set_exception(
                    InferenceTimeout(f"inference took longer than {self.timeout_s}s")
                )
        self._arm(loop)
