"""The protocol-free core that every route calls: find a ready model, run a batch, time it.

Where a batch runs depends on its measured cost (`Model.warm_up`): a batch estimated under
`inline_max_us` runs on the event loop, because handing it to a thread costs more than the
work (the thread must win the GIL back from a busy loop after a 5 µs run); anything larger goes
to a small dedicated executor, bounded by the request timeout, so the loop never stalls. With
adaptive batching on for a model (`serving/batching.py`), its requests go through its batcher,
which applies the same rule to each merged run. Both protocols (v2 and v1) share this path, so
their answers cannot differ.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from math import isfinite

import numpy as np

import inference
from inference.inputs import non_finite_row, total
from serving.batching import Batcher
from serving.collector import ServerCollector
from serving.errors import InferenceTimeout, ModelNotReady, NonFiniteOutput, PayloadTooLarge
from serving.metrics import Metrics
from serving.repository import ModelEntry, ModelRepository
from serving.settings import Settings


def _check_finite(model: inference.Model, name: str, array: np.ndarray) -> None:
    """Refuse an output holding NaN or infinity (a finite sum may also overflow)."""
    row = non_finite_row(array)
    if row is not None:
        raise NonFiniteOutput(
            f"model {model.name!r} version {model.version}: output {name!r} is NaN or infinite "
            f"in row {row}, for inputs it accepted; the model is broken or the input is outside "
            "what it was trained on"
        )


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        metrics: Metrics,
        collector: ServerCollector | None = None,
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
        self._inline_s = settings.inline_max_us / 1e6
        self._batchers: weakref.WeakKeyDictionary[inference.Model, Batcher | None] = (
            weakref.WeakKeyDictionary()
        )
        """One per loaded model version; a reloaded version gets a new one."""

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.settings.inference_workers, thread_name_prefix="inference"
        )

    def start(self) -> None:
        """(Re)open for requests: the app's lifespan may start and stop more than once."""
        if self.stopping:
            self.executor = self._new_executor()
            self._batchers.clear()  # they hold the old executor
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
    ) -> dict[str, np.ndarray]:
        """Run one request's named tensors; checks them (`Model.check`), limits and time,
        and the answer: NaN or infinity in an output is an error (`NonFiniteOutput`)."""
        checked = model.check(feeds)
        rows = model.rows(checked)
        if rows > self.settings.max_batch_rows:
            raise PayloadTooLarge(
                f"{rows} rows in one request exceed the limit of {self.settings.max_batch_rows}; "
                "split the batch"
            )
        self.metrics.observe_request_rows(model.name, model.version, rows)
        batcher = self._batcher(model)
        if batcher is not None:  # it keeps the request timeout
            result = await batcher.submit(checked, rows, outputs)
        elif (latency := model.latency) is not None and latency.estimate(rows) <= self._inline_s:
            result = self.run(model, checked, outputs)
        else:
            result = await self._in_executor(model, checked, outputs)
        for name, array in result.items():  # one sum per float output: NaN and inf propagate
            if array.dtype.kind == "f" and not isfinite(total(array)):
                _check_finite(model, name, array)
        return result

    async def _in_executor(
        self, model: inference.Model, checked: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, self.run, model, checked, outputs)
        except TimeoutError:
            raise InferenceTimeout(
                f"inference took longer than {self.settings.request_timeout_s}s"
            ) from None

    def run(
        self, model: inference.Model, feeds: Mapping[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        """One `session.run`, timed (on the event loop or in the executor)."""
        start = time.perf_counter()
        result = model.outputs(feeds, outputs)
        self.metrics.observe_inference(model.name, model.version, time.perf_counter() - start)
        return result

    def _batcher(self, model: inference.Model) -> Batcher | None:
        """The model version's adaptive batcher, made on its first request; None when off, or
        when the model cannot be batched (a fixed first dimension, as Triton's rule)."""
        try:
            return self._batchers[model]
        except KeyError:
            pass
        config = self.repository.batching(model)
        batcher = None
        if config.enabled and model.metadata.batchable:
            batcher = Batcher(
                model,
                config,
                self.run,
                self.executor,
                inline_max_us=self.settings.inline_max_us,
                timeout_s=self.settings.request_timeout_s,
                max_running=self.settings.inference_workers,
                observer=self.metrics.batch_observer(model.name, model.version),
            )
        self._batchers[model] = batcher
        return batcher

    def close(self) -> None:
        """Stop taking requests; runs in flight finish first."""
        self.stopping = True
        self.executor.shutdown(wait=True, cancel_futures=False)
