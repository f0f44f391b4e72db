"""Adaptive batching, per model version, as Triton's dynamic batcher: concurrent requests wait in
a queue, run merged in one `session.run`, and each gets back exactly its own rows.

A batch leaves the queue when it holds `max_batch_size` rows, or when its oldest request has
waited `max_delay_us`, whichever comes first, and only while no earlier batch of the same model
is still running: under load, the requests that arrive during one run make up the next batch, so
batches grow with the load and shrink to one request when it is light. `max_delay_us: 0` adds no
wait at all; requests that arrive in the same turn of the event loop still merge (while merging
pays, below).

The wait is spent only while it pays (as BentoML's adaptive dispatcher, unlike Triton's): while
fewer than one batch in ten of late has merged two or more requests (one client, or clients
that never overlap), a new request does not wait for others, not even for one turn of the loop:
it runs at once when the model is free. Every 16th still waits one turn and every 256th the
whole delay, so the batcher notices when requests start to come together, and so does any
batch that merges on its own (requests that arrive while a run is under way always merge). A
lone client then pays next to nothing for batching: neither `max_delay_us` nor the loop turns
(they cost ~35 µs of CPU a request on a 2-CPU VM, more than a small model's run).

Requests are merged along the batch axis only, and only with requests whose other dimensions
agree: a model with a dynamic inner dimension (a sequence length) runs requests of different
lengths apart, never padded. Models whose first dimension is fixed are not batched at all.

Every request is validated before it joins the queue, so a malformed request fails alone and
never reaches a batch. Should a merged run still fail, each of its requests is run again on its
own, so only the request that fails gets the error.

Settings give the defaults (`max_batch_size`, 0 = off, and `max_delay_us`); a model's
`model.yaml` may override them:

    serving:
      batching: {max_batch_size: 64, max_delay_us: 200}
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import inference
from serving.core.deadlines import Deadlines
from serving.core.statistics import FOLD_VALUES, ModelStats

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from serving.ops.tracing import BatchSpan, Tracing

Outputs = dict[str, np.ndarray]
Times = tuple[float, float, float, float]
"""A run's `time.perf_counter()` readings: began, inputs merged, run ended, outputs split."""
Results = tuple[list["Outputs | BaseException"], Times | None]
"""Each request's outputs or error, and the run's clock readings (None: it failed)."""
Feeds = Mapping[str, np.ndarray]
MERGED_TO_WAIT = 0.1
"""Requests wait for others while at least this share of recent batches merged requests."""
MERGE_MEMORY = 0.2
"""Weight of the newest batch in that share (a moving average: ~10 batches that merge nothing
take it from 1 to under `MERGED_TO_WAIT`)."""
PROBE_EVERY = 256
"""While waiting does not pay, every this-many-th request waits anyway, to find out again."""
TURN_PROBE_EVERY = 16
"""While waiting does not pay, every this-many-th request still waits one turn of the loop (a
few µs, where `max_delay_us` may be milliseconds), so that clients that start to overlap are
noticed within a few requests even with `max_delay_us: 0`."""
TIMER_RESOLUTION_S = 0.002
"""Waits shorter than this are polled rather than left to the loop's millisecond timers."""


def runs_inline(model: inference.Model, rows: int, inline_max_s: float) -> bool:
    """Whether a run of this many rows is measured cheap enough for the event loop (the one
    place that decides, for the data plane's lone runs and the batcher's merged ones): handing
    a cheaper run to a thread costs more than the run. A model not measured yet goes to the
    executor."""
    latency = model.latency
    return latency is not None and latency.estimate(rows) <= inline_max_s


NO_WAIT, TURN, FULL = 0, 1, 2
"""What `MergePolicy.wait` allows: no wait, one turn of the event loop, or the whole delay."""


class MergePolicy:
    """Wait for others only while waiting pays: the one rule of the batcher (requests wait for
    others to join their batch) and of the coalescer (`serving.http.coalescing`: responses
    wait for the others of their turn). Used from the event loop only."""

    __slots__ = ("_share", "_skipped")

    def __init__(self) -> None:
        self._share = 1.0
        """Moving share of recent groups (batches, responses sent together) of two or more;
        it starts as if all were, so a new server waits as configured until it learns."""
        self._skipped = 0

    @property
    def paying(self) -> bool:
        """Whether groups of late held two or more (waiting now pays)."""
        return self._share >= MERGED_TO_WAIT

    def wait(self) -> int:
        """How long the next request or response may wait: FULL while waiting pays; while it
        does not, NO_WAIT, but TURN every `TURN_PROBE_EVERY`-th and FULL every
        `PROBE_EVERY`-th time, to notice when they start to come together."""
        if self._share >= MERGED_TO_WAIT:
            return FULL
        self._skipped = skipped = self._skipped + 1
        if skipped % TURN_PROBE_EVERY:
            return NO_WAIT
        return TURN if skipped % PROBE_EVERY else FULL

    def observe(self, size: int) -> None:
        """Count a group that went on together (a batch's requests, a turn's responses)."""
        self._share += ((size > 1) - self._share) * MERGE_MEMORY


Runner = Callable[[inference.Model, Feeds, list[str] | None], Outputs]
"""Runs one batch on a model (`DataPlane.run`; None: the model's default outputs): the batcher
only decides what goes together."""


class BatchingOverride(BaseModel):
    """The `serving: batching:` section of model.yaml; unset keys keep the server's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_batch_size: int | None = Field(default=None, ge=0)
    """Most rows in one merged run; 0 turns batching off for this model."""
    max_delay_us: int | None = Field(default=None, ge=0)
    """Longest a request waits for others to join it, in microseconds."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int
    max_delay_us: int

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 0

    def override(self, section: BatchingOverride | None) -> BatchingConfig:
        if section is None:
            return self
        return BatchingConfig(
            max_batch_size=_first(section.max_batch_size, self.max_batch_size),
            max_delay_us=_first(section.max_delay_us, self.max_delay_us),
        )


BATCHING_OFF = BatchingConfig(max_batch_size=0, max_delay_us=0)


def _first(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass(eq=False)
class _Request:
    model: inference.Model
    """Held by the request while it is queued or running (the batcher holds it weakly)."""
    feeds: Feeds
    rows: int
    shape: tuple[tuple[int, ...], ...] | None
    """The inputs' sizes past the batch axis, where the model lets them vary: only requests of
    one `shape` merge. None where every size but the batch is fixed."""
    outputs: list[str]
    future: asyncio.Future[Outputs]
    enqueued: float
    """`time.perf_counter()` when the request joined the queue (the loop's clock may tick in
    whole milliseconds, as uvloop's does)."""
    due: float
    """When its batch leaves at the latest: `enqueued` plus the delay, or nothing added while
    waiting does not pay."""
    span: SpanContext | None = None
    """Its request span's context, with tracing on: its batch's span links to it."""


@dataclass
class BatchObserver:
    """Where a batcher reports each merged run (the service's Prometheus metrics)."""

    batch: Callable[[int, int], None] = field(default=lambda rows, requests: None)
    """(rows, requests) of one merged run."""
    queued: Callable[[float], None] = field(default=lambda seconds: None)
    """Seconds one request waited in the queue."""


class Batcher:
    """The queue of one model version. Used from the event loop only; runs go to `executor`
    unless the model's measured cost for the merged rows is under `inline_max_us`."""

    def __init__(
        self,
        model: inference.Model,
        config: BatchingConfig,
        run: Runner,
        executor: Executor,
        *,
        inline_max_us: float,
        deadlines: Deadlines | None = None,
        max_running: int = 1,
        observer: BatchObserver | None = None,
        stats: ModelStats | None = None,
        tracing: Tracing | None = None,
    ):
        self._model = weakref.ref(model)
        """Weakly: the service keeps one batcher per model version, keyed weakly by the version
        (`DataPlane`), and a batcher that held its key would keep every reloaded or unloaded
        version alive, its session with it. The requests in its queue hold the model."""
        self.config = config
        self._run = run
        self._executor = executor
        self._inline_max_s = inline_max_us / 1e6
        self._max_running = max_running
        self._observer = observer or BatchObserver()
        self._stats = stats
        """Where each run is counted (Triton's statistics), on the event loop."""
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._deadlines = deadlines if deadlines is not None else Deadlines(30.0)
        """Where each queued request's timeout is kept (the data plane's, shared)."""
        self._delay_s = config.max_delay_us / 1e6
        self._varying = any(-1 in i.shape[1:] for i in model.metadata.inputs)
        self._policy = MergePolicy()
        self._tracing = tracing
        """A span per run, None when off (`serving/ops/tracing.py`)."""

    @property
    def model(self) -> inference.Model:
        """The model version, while anything else holds it (the caller of `submit` does)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the batcher's model version is gone")
        return model

    async def submit(self, feeds: Feeds, rows: int, outputs: list[str] | None) -> Outputs:
        """Queue validated feeds of `rows` rows; their outputs come back when their batch has
        run."""
        model = self.model
        wait, turn = self._waits()
        idle = not turn and not self._queue and self._running < self._max_running
        if idle and runs_inline(model, rows, self._inline_max_s):
            if self._tracing is not None:
                with self._tracing.run_at_once(model, rows):
                    return self._run_at_once(model, feeds, rows, outputs)
            return self._run_at_once(model, feeds, rows, outputs)
        loop = asyncio.get_running_loop()
        names = list(outputs) if outputs is not None else model.metadata.default_outputs
        shape = tuple(a.shape[1:] for a in feeds.values()) if self._varying else None
        now = time.perf_counter()
        request = _Request(model, feeds, rows, shape, names, loop.create_future(), now, now + wait)
        if self._tracing is not None:
            request.span = self._tracing.link()
        self._queue.append(request)
        self._queued_rows += request.rows
        self._schedule(loop, turned=not turn)
        self._deadlines.watch(request.future)
        try:
            return await request.future  # cancelled (e.g. a disconnect): the batch skips it
        finally:
            # A timeout's traceback holds this frame: without `request` in it, no cycle
            # (frame, request, future, timeout, traceback) keeps the rows and the model for
            # the cyclic collector, which a serving process runs rarely. A failed run's
            # traceback still reaches its batch through the executor's frames; those are
            # our bugs (500s), rare, and wait for the collector.
            del request

    def _waits(self) -> tuple[float, bool]:
        """How long a new request may wait for others to join it (up to `max_delay_us`), and
        whether it waits at least one turn of the loop for those of the same turn."""
        wait = self._policy.wait()
        return (self._delay_s if wait == FULL else 0.0), wait != NO_WAIT

    def _run_at_once(
        self, model: inference.Model, feeds: Feeds, rows: int, outputs: list[str] | None
    ) -> Outputs:
        """A request that waits for nobody, on an idle model, run on the loop: what `_dispatch`
        does with a batch of one, without the queue, future and callbacks around it (they
        cost more than a small model's run)."""
        self._observer.queued(0.0)
        self._note_batch(rows, 1)
        stats = self._stats
        if stats is None:
            return self._run(model, feeds, outputs)
        start = time.perf_counter()
        result = self._run(model, feeds, outputs)
        done = time.perf_counter()
        executions = stats.executions  # as `_count`, inline: this runs per request
        executions += (rows, 1, 0.0, start, start, done, done)
        if len(executions) >= FOLD_VALUES:
            stats.fold()
        return result

    @staticmethod
    def _count(stats: ModelStats, rows: int, requests: int, queued_s: float, times: Times) -> None:
        """Record a run in the statistics: numbers added to a list, folded in bulk."""
        executions = stats.executions
        executions += (rows, requests, queued_s, *times)
        if len(executions) >= FOLD_VALUES:
            stats.fold()

    def _note_batch(self, rows: int, requests: int) -> None:
        """Report a run to the observer and count it in the share of batches that merged."""
        self._observer.batch(rows, requests)
        self._policy.observe(requests)

    def _schedule(self, loop: asyncio.AbstractEventLoop, *, turned: bool = False) -> None:
        """Start a batch now, or once the oldest request's wait is over; nothing while the
        model is busy (the running batch calls back when done). A batch that is due still
        waits one turn of the loop (`turned`), so that requests of the same turn join it."""
        if not self._queue or self._running >= self._max_running:
            return
        if self._queued_rows >= self.config.max_batch_size:
            self._dispatch(loop)
            return
        wait = self._queue[0].due - time.perf_counter()
        if wait <= 0 and turned:
            self._dispatch(loop)
        elif wait < TIMER_RESOLUTION_S:
            # uvloop's timers fire in whole milliseconds: a 200 µs wait would last 1-2 ms.
            # Shorter waits poll at each turn of the loop (which keeps it busy only for them).
            if self._soon is None:
                self._soon = loop.call_soon(self._poll, loop)
        elif self._timer is None:  # wake up a little early; the rest is polled
            self._timer = loop.call_later(wait - TIMER_RESOLUTION_S, self._wake, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        self._soon = None
        self._schedule(loop, turned=True)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._schedule(loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        batch = self._take(time.perf_counter())
        if not batch:
            return
        rows = sum(r.rows for r in batch)
        self._note_batch(rows, len(batch))
        self._running += 1
        inline = runs_inline(batch[0].model, rows, self._inline_max_s)
        span = None
        if self._tracing is not None:
            span = self._tracing.batch(batch[0].model, [r.span for r in batch], rows, inline)
        if inline:
            self._finish(loop, batch, *self._run_batch(batch), span=span)
            return
        try:
            future = loop.run_in_executor(self._executor, self._run_batch, batch)
        except RuntimeError as e:  # the executor is shut down: the server is stopping
            self._finish(loop, batch, [e for _ in batch], span=span)
            return
        future.add_done_callback(
            lambda done: self._finish(loop, batch, *_results(done, batch), span=span)
        )

    def _take(self, now: float) -> list[_Request]:
        """Requests from the head of the queue up to `max_batch_size` rows (a larger request
        goes alone); cancelled ones are dropped. Where sizes past the batch axis may vary, the
        batch takes the requests of the head's shape and leaves the others queued in order."""
        batch: list[_Request] = []
        rows = 0
        passed: list[_Request] = []
        while self._queue:
            request = self._queue[0]
            if batch and rows + request.rows > self.config.max_batch_size:
                break
            self._queue.popleft()
            if request.future.done():
                self._queued_rows -= request.rows
                continue
            if batch and request.shape != batch[0].shape:
                passed.append(request)
                continue
            self._queued_rows -= request.rows
            self._observer.queued(now - request.enqueued)
            batch.append(request)
            rows += request.rows
        self._queue.extendleft(reversed(passed))
        return batch

    def _run_batch(self, batch: list[_Request]) -> Results:
        """One merged run, split back per request; if it fails, each request on its own."""
        began = time.perf_counter()
        if len(batch) == 1:
            result = self._run_alone(batch[0])
            done = time.perf_counter()
            failed = isinstance(result, BaseException)
            return [result], None if failed else (began, began, done, done)
        names = list(dict.fromkeys(n for r in batch for n in r.outputs))
        feeds = {name: np.concatenate([r.feeds[name] for r in batch]) for name in batch[0].feeds}
        merged_at = time.perf_counter()
        try:
            merged = self._run(batch[0].model, feeds, names)
        except Exception:
            return [self._run_alone(r) for r in batch], None
        ran_at = time.perf_counter()
        results: list[Outputs | BaseException] = []
        start = 0
        for request in batch:
            end = start + request.rows
            results.append({n: merged[n][start:end] for n in request.outputs})
            start = end
        return results, (began, merged_at, ran_at, time.perf_counter())

    def _run_alone(self, request: _Request) -> Outputs | BaseException:
        try:
            return self._run(request.model, request.feeds, request.outputs)
        except Exception as e:
            return e

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Request],
        results: list[Outputs | BaseException],
        times: Times | None = None,
        span: BatchSpan | None = None,
    ) -> None:
        if span is not None:
            span.end(results)
        if times is not None and self._stats is not None:
            waited = sum(times[0] - r.enqueued for r in batch)
            self._count(self._stats, sum(r.rows for r in batch), len(batch), waited, times)
        for request, result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if isinstance(result, asyncio.CancelledError):
                request.future.cancel()
            elif isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
        self._running -= 1
        self._schedule(loop)


def _results(done: asyncio.Future[Results], batch: list[_Request]) -> Results:
    """The executor's answer, or its failure (e.g. shut down) for every request of the batch."""
    if done.cancelled():
        return [asyncio.CancelledError() for _ in batch], None
    error = done.exception()
    if error is not None:
        return [error for _ in batch], None
    return done.result()
