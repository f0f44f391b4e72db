"""Run search trials in parallel, each a full training run: in a process pool, or as Spark tasks.

A trial never raises: whatever goes wrong (an exception in training, a non-finite metric, a
worker that died) becomes a `TrialResult` with an `error`, and the other trials go on. A trial
sends back its weights and history, not a bundle: the driver exports the winner only.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.fit import History
from training.train import Run, fit, weights

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class Trial:
    number: int
    """1-based, in the order the search planned them."""
    params: dict[str, Any]
    """Dotted spec path → the value this trial uses."""


@dataclass(frozen=True)
class TrialJob:
    trial: Trial
    run: Run
    metric: str
    threads: int | None = None
    """torch threads; None: the Spark task's `spark.task.cpus`."""


@dataclass
class TrialResult:
    trial: Trial
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    state: dict[str, np.ndarray] | None = None
    history: History | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


OnDone = Callable[[TrialResult], None]


def run_trial(job: TrialJob) -> TrialResult:
    """One full training run; its failure is its result, never an exception."""
    torch.set_num_threads(max(1, job.threads or 1))
    started = time.perf_counter()
    try:
        fitted = fit(job.run)
        metrics = fitted.history.final
        value = metrics.get(job.metric, math.nan)
        if not math.isfinite(value):
            raise ValueError(f"{job.metric} is {value} (training diverged?)")
        return TrialResult(
            job.trial,
            metrics,
            time.perf_counter() - started,
            state=weights(fitted),
            history=fitted.history,
        )
    except Exception as e:  # any failure of this trial's training is reported, not raised
        return failed(job.trial, e, time.perf_counter() - started)


def failed(trial: Trial, error: BaseException, seconds: float = 0.0) -> TrialResult:
    text = " ".join(str(error).split()) or "no message"
    return TrialResult(trial, seconds=seconds, error=f"{type(error).__name__}: {text}"[:300])


def run_in_processes(jobs: Sequence[TrialJob], parallelism: int, done: OnDone) -> None:
    """A pool of `parallelism` fresh interpreters (spawned: forking a process that already
    runs torch's threads can deadlock), each using its share of this machine's CPUs."""
    threads = max(1, len(os.sched_getaffinity(0)) // parallelism)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=parallelism, mp_context=context) as pool:
        futures: dict[Future[TrialResult], Trial] = {
            pool.submit(run_trial, _with_threads(job, threads)): job.trial for job in jobs
        }
        for future in as_completed(futures):
            done(_outcome(future, futures[future]))


def run_on_spark(
    jobs: Sequence[TrialJob], spark: SparkSession, parallelism: int, done: OnDone
) -> None:
    """Each trial is a one-task Spark job, `parallelism` at a time from driver threads, so that a
    task that dies (a crashed Python worker) fails its trial only, not the whole search."""
    context = spark.sparkContext

    def one(job: TrialJob) -> TrialResult:
        context.setJobDescription(f"search trial {job.trial.number}")
        result: TrialResult = context.parallelize([job], 1).map(_spark_trial).collect()[0]
        return result

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        futures = {pool.submit(one, job): job.trial for job in jobs}
        for future in as_completed(futures):
            done(_outcome(future, futures[future]))


def _spark_trial(job: TrialJob) -> TrialResult:
    """On an executor: as many torch threads as the task was given CPUs."""
    from pyspark import TaskContext

    context = TaskContext.get()
    threads = int(context.cpus()) if context is not None else 1
    return run_trial(_with_threads(job, threads))


def _with_threads(job: TrialJob, threads: int) -> TrialJob:
    return TrialJob(job.trial, job.run, job.metric, threads)


def _outcome(future: Future[TrialResult], trial: Trial) -> TrialResult:
    try:
        return future.result()
    except Exception as e:  # the worker died or the task failed: this trial failed
        return failed(trial, e)
