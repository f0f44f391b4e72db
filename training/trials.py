"""Run search trials in parallel, each a full training run: in a process pool, or as Spark tasks.

A trial never raises: whatever goes wrong (an exception in training, a non-finite metric, a
worker that died) becomes a `TrialResult` with an `error`, and the other trials go on. A trial
sends back its weights and history, not a bundle: the driver exports the winner only.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.fit import History
from training.spark import TaggedJobs, worker_error
from training.trainer import Run, fit, weights

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


def run_in_processes(
    jobs: Sequence[TrialJob],
    parallelism: int,
    done: OnDone,
    say: Callable[[str], None] | None = None,
) -> None:
    """A pool of `parallelism` fresh interpreters (spawned: forking a process that already
    runs torch's threads can deadlock), each using its share of this machine's CPUs.

    A worker that dies (killed, out of memory, a crash in native code) breaks the pool: every
    trial it had not finished comes back unrun. Those run again, each in a process of its own,
    so that only a trial whose own process dies fails.
    """
    threads = max(1, len(os.sched_getaffinity(0)) // parallelism)
    lost = _in_one_pool([_with_threads(job, threads) for job in jobs], parallelism, done)
    if lost:
        if say is not None:
            numbers = ", ".join(str(job.trial.number) for job in lost)
            say(f"A worker process died; trials {numbers} run again, each in a process of its own")
        _each_alone(lost, parallelism, done)


def _in_one_pool(jobs: Sequence[TrialJob], parallelism: int, done: OnDone) -> list[TrialJob]:
    """Every trial in one pool; returns those that a dead worker took down with it."""
    lost: list[TrialJob] = []
    futures: dict[Future[TrialResult], TrialJob] = {}
    with _pool(parallelism) as pool:
        with _workers_ignore_interrupts():  # the workers start on submit
            for queued, job in enumerate(jobs):
                try:
                    futures[pool.submit(run_trial, job)] = job
                except BrokenProcessPool:  # a worker died while the rest were being queued
                    lost.extend(jobs[queued:])
                    break
        try:
            for future in as_completed(futures):
                if isinstance(future.exception(), BrokenProcessPool):
                    lost.append(futures[future])
                else:
                    done(_outcome(future, futures[future].trial))
        except BaseException:  # Ctrl-C: no trial may go on (or start) after the search ends
            _stop(pool)
            raise
    return sorted(lost, key=lambda job: job.trial.number)


def _each_alone(jobs: Sequence[TrialJob], parallelism: int, done: OnDone) -> None:
    """Each trial in a pool of one worker, `parallelism` at a time."""
    waiting = list(jobs)
    running: dict[Future[TrialResult], tuple[Trial, ProcessPoolExecutor]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < parallelism:
                job, pool = waiting.pop(0), _pool(1)
                with _workers_ignore_interrupts():
                    running[pool.submit(run_trial, job)] = (job.trial, pool)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                trial, pool = running.pop(future)
                pool.shutdown()
                done(_outcome(future, trial))
    except BaseException:
        for _, pool in running.values():
            _stop(pool)
        raise


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


@contextmanager
def _workers_ignore_interrupts() -> Iterator[None]:
    """Processes started in this block ignore SIGINT (they inherit it and Python keeps it).

    A terminal's Ctrl-C reaches the whole process group. The driver alone handles it, and ends
    the workers (`_stop`), so that no worker prints a traceback of its own, even one that is
    still importing torch.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals, and may change their handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Drop the trials not started and end the running ones now, not when they finish."""
    workers = list((pool._processes or {}).values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.terminate()


def run_on_spark(
    jobs: Sequence[TrialJob], spark: SparkSession, parallelism: int, done: OnDone
) -> None:
    """Each trial is a one-task Spark job, `parallelism` at a time from driver threads, so that a
    task that dies (a crashed Python worker) fails its trial only, not the whole search."""
    import pyarrow as pa

    spark_jobs = TaggedJobs(spark)

    def one(job: TrialJob) -> TrialResult:
        # One row in one partition: one task, which trains the trial it closes over. A
        # DataFrame job, not an RDD's, so that Spark Connect sessions run it too.
        def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for _ in batches:
                pass
            yield pa.RecordBatch.from_pylist([{"result": pickle.dumps(_spark_trial(job))}])

        row = spark.range(1, numPartitions=1).mapInArrow(task, "result binary").collect()[0]
        result: TrialResult = pickle.loads(row["result"])
        return result

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        futures = {pool.submit(spark_jobs.tagged(one), job): job.trial for job in jobs}
        try:
            for future in as_completed(futures):
                done(_outcome(future, futures[future]))
        except BaseException:  # Ctrl-C: cancel the running trials, start no other
            pool.shutdown(wait=False, cancel_futures=True)
            spark_jobs.cancel()
            raise


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
    except BrokenProcessPool:
        return TrialResult(trial, error="its process died: killed, out of memory, or crashed")
    except Exception as e:  # the Spark task failed (its Python worker died): this trial failed
        return TrialResult(trial, error=worker_error(e)[:300])
