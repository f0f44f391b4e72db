"""The protocol-free core that every route calls: find a ready model, run a batch, time it.

Where a batch runs depends on its measured cost (`Model.warm_up`): a batch estimated under
`inline_max_us` runs on the event loop, because handing it to a thread costs more than the
work (the thread must win the GIL back from a busy loop after a 5 µs run); anything larger goes
to a small dedicated executor, bounded by the request timeout, so the loop never stalls. With
adaptive batching on for a model (`serving/core/batching.py`), its requests go through its batcher,
which applies the same rule to each merged run. Both protocols (v2 and v1) share this path, so
their answers cannot differ, and so are counted once in each model version's statistics
(`serving/core/statistics.py`).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

import numpy as np

import inference
from inference.inputs import non_finite_row, total
from serving.core.batching import Batcher, runs_inline
from serving.core.deadlines import Deadlines
from serving.core.errors import ModelNotReady, NonFiniteOutput, PayloadTooLarge
from serving.core.repository import ModelEntry, ModelRepository
from serving.core.statistics import FOLD_VALUES, ModelStats
from serving.ops.collector import ServerCollector
from serving.ops.metrics import Metrics
from serving.ops.settings import Settings
from serving.ops.tracing import Tracing

Outputs = dict[str, np.ndarray]


def _check_finite(model: inference.Model, name: str, array: np.ndarray) -> None:
    """Refuse an output holding NaN or infinity (a finite sum may also overflow)."""
    row = non_finite_row(array)
    if row is not None:
        raise NonFiniteOutput(
            f"model {model.name!r} version {model.version}: output {name!r} is NaN or infinite "
            f"in row {row}, for inputs it accepted; the model is broken or the input is outside "
            "what it was trained on"
        )


def _pass_on(done: asyncio.Future[Any], answer: asyncio.Future[Any]) -> None:
    """Copy the executor's outcome to the answer awaited, unless that already timed out (or
    its request left)."""
    if done.cancelled():
        if not answer.done():
            answer.cancel()
        return
    error = done.exception()  # read even when dropped: asyncio warns of errors never read
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(done.result())


@dataclass(slots=True)
class Lane:
    """What the data plane keeps per loaded model version: its batcher and its statistics."""

    batcher: Batcher | None
    stats: ModelStats = field(default_factory=ModelStats)


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        metrics: Metrics,
        collector: ServerCollector | None = None,
        tracing: Tracing | None = None,
    ):
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.loaded = False
        """True once the startup load finished (whatever each model's outcome)."""
        self.stopping = False
        self.collector = collector
        """Set where the service owns its process: settled after each change of the models."""
        self.executor = self._new_executor()
        self.deadlines = Deadlines(settings.request_timeout_s)
        """Every answer that waits on the executor or a batch, failed at the request timeout."""
        self._inline_s = settings.inline_max_us / 1e6
        self.tracing = tracing
        """OpenTelemetry's spans, None when off (`serving/ops/tracing.py`)."""
        self._lanes: weakref.WeakKeyDictionary[inference.Model, Lane] = weakref.WeakKeyDictionary()
        """One per loaded model version; a reloaded version gets a new one (its statistics
        start again, as Triton's do)."""

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.settings.inference_workers, thread_name_prefix="inference"
        )

    def start(self) -> None:
        """(Re)open for requests: the app's lifespan may start and stop more than once."""
        if self.stopping:
            self.executor = self._new_executor()
            for model, lane in list(self._lanes.items()):  # batchers hold the old executor
                if lane.batcher is not None:
                    lane.batcher = self._new_batcher(model, lane.stats)
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.loaded and not self.stopping

    def load_all(self) -> None:
        try:
            self.repository.load_all()
            self.settle()
        finally:
            self.loaded = True

    def load(self, name: str) -> ModelEntry:
        """(Re)load one model from disk (the repository API; in a thread). Settles the
        collector once the models have changed: not for an unknown name (404), which changes
        nothing and would otherwise buy any client a full collection a request."""
        entry = self.repository.load(name)
        self.settle()
        return entry

    def unload(self, name: str) -> None:
        """Unload one model (the repository API; in a thread); settles as `load` does."""
        self.repository.unload(name)
        self.settle()

    def settle(self) -> None:
        """Settle the process's collector, where the service owns its process."""
        if self.collector is not None:
            self.collector.settle()

    def model(self, name: str, version: str | None = None) -> inference.Model:
        if not self.loaded and name not in {e.name for e in self.repository.entries()}:
            raise ModelNotReady(f"the server is still loading models; {name!r} is not loaded yet")
        return self.repository.get(name, version)

    async def infer(
        self, model: inference.Model, feeds: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> Outputs:
        """Run one request's named tensors; checks them (`Model.check`), limits and time,
        and the answer: NaN or infinity in an output is an error (`NonFiniteOutput`). Counted
        in the model version's statistics, success or failure."""
        start = time.perf_counter()
        lane = self.lane(model)
        try:
            checked = model.check(feeds)
            rows = model.rows(checked)
            if self.tracing is not None:  # the request span's model, version and rows
                self.tracing.note(model, rows)
            if rows > self.settings.max_batch_rows:
                raise PayloadTooLarge(
                    f"{rows} rows in one request exceed the limit of "
                    f"{self.settings.max_batch_rows}; split the batch"
                )
            self.metrics.observe_request_rows(model.name, model.version, rows)
            batcher = lane.batcher
            if batcher is not None:  # it keeps the request timeout and records its runs
                result = await batcher.submit(checked, rows, outputs)
                submitted = begun = done = 0.0
            elif runs_inline(model, rows, self._inline_s):
                result, begun, done = self._timed(model, checked, outputs)
                submitted = begun
            else:
                submitted = time.perf_counter()
                result, begun, done = await self._in_executor(model, checked, outputs)
            for name, array in result.items():  # one sum per float output: NaN, inf propagate
                if array.dtype.kind == "f" and not isfinite(total(array)):
                    _check_finite(model, name, array)
        except Exception:
            lane.stats.failed(time.perf_counter() - start)
            raise
        stats = lane.stats  # numbers added to a list, folded in bulk (serving/core/statistics.py)
        if begun:
            alone = stats.alone
            alone += (rows, start, submitted, begun, done)
            if len(alone) >= FOLD_VALUES:
                stats.fold()
        else:
            answered = stats.answered
            answered += (rows, start, time.perf_counter())
            if len(answered) >= FOLD_VALUES:
                stats.fold()
        return result

    async def _in_executor(
        self, model: inference.Model, checked: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> tuple[Outputs, float, float]:
        """The run in the executor, its answer bounded by the request timeout (`deadlines`)."""
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self.executor, self._timed, model, checked, outputs)
        answer: asyncio.Future[tuple[Outputs, float, float]] = loop.create_future()
        running.add_done_callback(lambda done: _pass_on(done, answer))
        self.deadlines.watch(answer)
        return await answer

    def run(
        self, model: inference.Model, feeds: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> Outputs:
        """One `session.run`, timed (on the event loop or in the executor): the batcher's
        runner, which times its runs for the statistics itself."""
        start = time.perf_counter()
        result = model.outputs(feeds, outputs)
        self.metrics.observe_inference(model.name, model.version, time.perf_counter() - start)
        return result

    def _timed(
        self, model: inference.Model, feeds: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> tuple[Outputs, float, float]:
        """`run`, with the clock's readings before and after (for the statistics)."""
        start = time.perf_counter()
        result = model.outputs(feeds, outputs)
        done = time.perf_counter()
        self.metrics.observe_inference(model.name, model.version, done - start)
        return result, start, done

    def lane(self, model: inference.Model) -> Lane:
        """The model version's batcher and statistics, made on first use (on the loop)."""
        try:
            return self._lanes[model]
        except KeyError:
            pass
        lane = self._lanes[model] = Lane(None)
        lane.batcher = self._new_batcher(model, lane.stats)
        return lane

    def _new_batcher(self, model: inference.Model, stats: ModelStats) -> Batcher | None:
        """The model version's adaptive batcher; None when off, or when the model cannot be
        batched (a fixed first dimension, as Triton's rule)."""
        config = self.repository.batching(model)
        if not (config.enabled and model.metadata.batchable):
            return None
        return Batcher(
            model,
            config,
            self.run,
            self.executor,
            inline_max_us=self.settings.inline_max_us,
            deadlines=self.deadlines,
            max_running=self.settings.inference_workers,
            observer=self.metrics.batch_observer(model.name, model.version),
            stats=stats,
            tracing=self.tracing,
        )

    def close(self) -> None:
        """Stop taking requests; runs in flight finish first."""
        self.stopping = True
        self.executor.shutdown(wait=True, cancel_futures=False)
        if self.tracing is not None:  # send the spans still buffered
            self.tracing.close()
