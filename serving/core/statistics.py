"""Triton's statistics extension: per model version, what its requests and runs cost.

Counting must cost a request next to nothing (`bench/instructions.py` counts it): a request
adds its clock readings to a flat list of numbers (no tuple kept: a container object per
request would bring the cyclic collector's young collections back, see serving/ops/collector.py),
and the totals are folded from those lists in bulk with numpy every `FOLD_VALUES` numbers and
whenever the statistics are read. Everything is added and folded on the event loop (the
executor's threads hand their readings back), so nothing needs a lock. What can be derived is
derived when read: execution counts from the runs per batch size, per-request compute times
from the runs and the requests merged into them.

What the durations mean here, in Triton's words:
- success / fail: a request in the data plane (`DataPlane.infer`), from its tensors' check to
  its outputs; decoding and encoding the protocol's format are left out, as Triton's core
  leaves out its HTTP and gRPC front ends.
- queue: waiting in the adaptive batcher's queue, or for an executor thread.
- compute_input: checking the request's tensors (`Model.check`), or merging the requests of a
  batch; compute_infer: `session.run`; compute_output: splitting a merged run's outputs back
  per request (nothing for a request run alone: onnxruntime's arrays are its outputs).
A request merged with others is charged its batch's compute times, as Triton charges them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

NS = 1_000_000_000
FOLD_VALUES = 16384
"""Numbers kept before they are folded into the totals (a few hundred kB at most)."""
ALONE = 5
"""A request run alone, without the batcher, adds 5 numbers to `alone`: rows and its
`time.perf_counter()` readings when its check began, when it was handed to a run, when the
run began and when it ended."""
ANSWERED = 3
"""A request answered by the adaptive batcher adds 3 to `answered`: rows, the readings when it
began and ended."""
EXECUTION = 7
"""A run of the adaptive batcher adds 7 to `executions`: rows, requests, the seconds they
waited in all, the readings when it began, when its inputs were merged, when the run ended and
when the outputs were split."""


class BatchStats:
    """The runs of one batch size: how many, and their compute times in seconds."""

    __slots__ = ("count", "infer_s", "input_s", "output_s")

    def __init__(self) -> None:
        self.count = 0
        self.input_s = 0.0
        self.infer_s = 0.0
        self.output_s = 0.0

    def add(self, count: int, input_s: float, infer_s: float, output_s: float) -> None:
        self.count += count
        self.input_s += input_s
        self.infer_s += infer_s
        self.output_s += output_s


class ModelStats:
    """The statistics of one loaded model version, since it was loaded."""

    __slots__ = (
        "alone",
        "answered",
        "batches",
        "epoch",
        "executions",
        "fail",
        "fail_s",
        "last",
        "merged",
        "queue_s",
        "rows",
        "success",
        "success_s",
    )

    def __init__(self) -> None:
        self.alone: list[float] = []
        self.answered: list[float] = []
        self.executions: list[float] = []
        self.success = 0
        self.success_s = 0.0
        self.fail = 0
        self.fail_s = 0.0
        self.queue_s = 0.0
        self.rows = 0
        self.last = 0.0
        """`time.perf_counter()` when the last request succeeded (0: none yet)."""
        self.epoch = time.time() - time.perf_counter()
        """The epoch's time on `perf_counter`'s clock, to report `last` in wall-clock time."""
        self.batches: dict[int, BatchStats] = {}
        self.merged = BatchStats()
        """What requests that shared a run with an earlier request of its batch were charged
        (`count`: how many)."""

    def failed(self, seconds: float) -> None:
        self.fail += 1
        self.fail_s += seconds

    def fold(self) -> None:
        """Add the records kept so far to the totals, and forget them."""
        if self.alone:
            self._fold_alone(_records(self.alone, ALONE))
        if self.answered:
            rows, start, end = _records(self.answered, ANSWERED).T
            self._succeeded(rows, start, end)
        if self.executions:
            self._fold_executions(_records(self.executions, EXECUTION))

    def _fold_alone(self, records: np.ndarray) -> None:
        rows, start, submitted, begun, done = records.T
        self._succeeded(rows, start, done)
        self.queue_s += float((begun - submitted).sum())
        self._per_size(rows, submitted - start, done - begun, np.zeros_like(rows))

    def _succeeded(self, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        self.success += len(rows)
        self.success_s += float((end - start).sum())
        self.rows += int(rows.sum())
        self.last = max(self.last, float(end.max()))

    def _fold_executions(self, records: np.ndarray) -> None:
        rows, requests, queued, start, merged, ran, split = records.T
        self.queue_s += float(queued.sum())
        times = merged - start, ran - merged, split - ran
        self._per_size(rows, *times)
        others = requests - 1
        self.merged.add(int(others.sum()), *(float((others * t).sum()) for t in times))

    def _per_size(self, rows: np.ndarray, *times: np.ndarray) -> None:
        sizes, where = np.unique(rows.astype(np.int64), return_inverse=True)
        counts = np.bincount(where).tolist()
        sums = [np.bincount(where, weights=t).tolist() for t in times]
        for size, count, *seconds in zip(sizes.tolist(), counts, *sums, strict=True):
            batch = self.batches.get(size)
            if batch is None:
                batch = self.batches[size] = BatchStats()
            batch.add(count, *seconds)

    def report(self, name: str, version: int, batchable: bool) -> dict[str, Any]:
        """The statistics as Triton's JSON (`$model_stat`)."""
        self.fold()
        batches = self.batches if batchable else _as_one(self.batches)
        executions = sum(b.count for b in batches.values())
        every = BatchStats()
        for b in (*batches.values(), self.merged):
            every.add(b.count, b.input_s, b.infer_s, b.output_s)
        return {
            "name": name,
            "version": str(version),
            "last_inference": round((self.epoch + self.last) * 1000) if self.last else 0,
            "inference_count": self.rows if batchable else self.success,
            "execution_count": executions,
            "inference_stats": {
                "success": _duration(self.success, self.success_s),
                "fail": _duration(self.fail, self.fail_s),
                "queue": _duration(every.count, self.queue_s),
                "compute_input": _duration(every.count, every.input_s),
                "compute_infer": _duration(every.count, every.infer_s),
                "compute_output": _duration(every.count, every.output_s),
                "cache_hit": _duration(0, 0.0),
                "cache_miss": _duration(0, 0.0),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": _duration(b.count, b.input_s),
                    "compute_infer": _duration(b.count, b.infer_s),
                    "compute_output": _duration(b.count, b.output_s),
                }
                for size, b in sorted(batches.items())
            ],
        }


def _records(values: list[float], width: int) -> np.ndarray:
    """A flat list's numbers as rows of `width`; the list is emptied."""
    records = np.array(values, dtype=np.float64).reshape(-1, width)
    values.clear()
    return records


def _as_one(batches: dict[int, BatchStats]) -> dict[int, BatchStats]:
    """A model without a batch axis runs batches of one, whatever its first dimension."""
    if not batches:
        return {}
    one = BatchStats()
    for b in batches.values():
        one.add(b.count, b.input_s, b.infer_s, b.output_s)
    return {1: one}


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": max(0, round(seconds * NS))}
