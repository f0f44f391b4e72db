"""The protocol-free core that every route calls: find a ready model, run a batch, time it.

Where a batch runs depends on its measured cost (`Model.warm_up`): a batch estimated under
`inline_max_us` runs on the event loop, because handing it to a thread costs more than the
work (the thread must win the GIL back from a busy loop after a 5 µs run); anything larger goes
to a small dedicated executor, bounded by the request timeout, so the loop never stalls. Both
protocols (v2 and v1) share this path, so their answers cannot differ.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import inference
from inference.inputs import check_rows
from serving.errors import InferenceTimeout, ModelNotReady, PayloadTooLarge
from serving.metrics import Metrics
from serving.repository import ModelRepository
from serving.settings import Settings


class DataPlane:
    def __init__(self, repository: ModelRepository, settings: Settings, metrics: Metrics):
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.loaded = False
        """True once the startup load finished (whatever each model's outcome)."""
        self.stopping = False
        self.executor = self._new_executor()

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.settings.inference_workers, thread_name_prefix="inference"
        )

    def start(self) -> None:
        """(Re)open for requests: the app's lifespan may start and stop more than once."""
        if self.stopping:
            self.executor = self._new_executor()
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.loaded and not self.stopping

    def load_all(self) -> None:
        try:
            self.repository.load_all()
        finally:
            self.loaded = True

    def model(self, name: str, version: str | None = None) -> inference.Model:
        if not self.loaded and name not in {e.name for e in self.repository.entries()}:
            raise ModelNotReady(f"the server is still loading models; {name!r} is not loaded yet")
        return self.repository.get(name, version)

    async def infer(
        self, model: inference.Model, matrix: np.ndarray, outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Run one batch of raw features; checks rows, limits and time."""
        rows = matrix.shape[0]
        if rows > self.settings.max_batch_rows:
            raise PayloadTooLarge(
                f"{rows} rows in one request exceed the limit of {self.settings.max_batch_rows}; "
                "split the batch"
            )
        check_rows(matrix, model.metadata.input)
        latency = model.latency
        if latency is not None and latency.estimate(rows) * 1e6 <= self.settings.inline_max_us:
            return self._run(model, matrix, outputs)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self._run, model, matrix, outputs)
        try:
            return await asyncio.wait_for(future, self.settings.request_timeout_s)
        except TimeoutError:
            raise InferenceTimeout(
                f"inference took longer than {self.settings.request_timeout_s}s"
            ) from None

    def _run(
        self, model: inference.Model, matrix: np.ndarray, outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        prediction = model.run(matrix, outputs)
        self.metrics.observe_inference(
            model.name, model.version, time.perf_counter() - start, matrix.shape[0]
        )
        return prediction.outputs

    def close(self) -> None:
        """Stop taking requests; runs in flight finish first."""
        self.stopping = True
        self.executor.shutdown(wait=True, cancel_futures=False)
