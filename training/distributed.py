"""One model, many workers: data-parallel training on Spark with PyTorch DDP.

    python -m training models/side_effects --spark --num-processes 2
    spark-submit --master yarn training/__main__.py models/side_effects --spark --num-processes 4

The driver prepares the run as single-process training does (spec, data, seeded split; a
`spark:` source, or Parquet at a URI pyarrow does not read, such as `s3a://`, is read through
Spark and collected), except for Parquet that pyarrow reads (a local path, `s3://`, `gs://`):
of that it reads only the footers, and each rank reads its own share of the row groups
(`training.row_groups`). pyspark's
`TorchDistributor` then starts one barrier Spark task per process (`local_mode=False`, so the
processes are Spark tasks on `local[*]` and on a cluster alike); each task runs torchrun, which
calls `_rank` with the prepared run. Every rank builds the same seeded network, wraps it in
`DistributedDataParallel` (gloo on CPU, nccl when the task sees a GPU) and fits it with the
shared trainer on its shard of each epoch (`training.fit.Shard`).

Batch size: `fit.batch_size` stays the *global* batch. Each rank takes `ceil(batch_size / N)`
rows per step and DDP averages the gradients, so one optimizer step sees the same number of rows
(and the same learning rate) as single-process training, and the number of steps per epoch is
the same too. That is what lets N processes reach the quality of one with the same spec.

Rank 0 returns its weights and history (TorchDistributor returns rank 0's value); the driver
re-creates the network and exports the bundle with the usual parity check.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training import row_groups
from training.errors import DistributedError
from training.fit import Shard
from training.row_groups import ParquetRun
from training.spark import TaggedJobs, master_of, spark_session, task_slots, worker_error
from training.spec import SpecError, load_spec
from training.trainer import (
    Fitted,
    Run,
    TrainResult,
    export,
    fit,
    fit_config,
    prepare_spec,
    rebuild,
    weights,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

COLLECTIVE_TIMEOUT = timedelta(minutes=5)
"""How long a rank waits for the others in one collective before it gives up (gloo's default
of 30 minutes would leave a failed run hanging for half an hour)."""


@dataclass(frozen=True)
class RankFailed:
    """What a rank returns instead of raising: TorchDistributor reports a raised error only as
    "failed during training, view stdout logs", without the cause."""

    rank: int
    error: str
    data: bool = False
    """A data error (a `SpecError`), which every rank found alike."""


def train_distributed(
    spec_path: str | Path,
    *,
    num_processes: int = 2,
    spark: SparkSession | None = None,
    master: str | None = None,
    epochs: int | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train the model of `spec_path` with `num_processes` DDP workers as Spark tasks."""
    started = time.perf_counter()
    spark = spark or spark_session(master)
    spec, spec_file = load_spec(spec_path)
    plan = row_groups.plan(spec, spec_file)  # the footers only
    if plan is None:
        run = prepare_spec(spec, spec_file, epochs=epochs, verbose=verbose, spark=spark)
        fitted = fit_distributed(run, spark, num_processes)
    else:
        config = fit_config(spec, epochs=epochs, verbose=verbose)
        run, fitted = fit_shares(ParquetRun(spec, spec_file, config, plan), spark, num_processes)
    return export(
        run,
        fitted,
        started=started,
        provenance={
            "distributed": {
                "num_processes": num_processes,
                "backend": "nccl" if _spark_gives_gpus(spark) else "gloo",
                "launcher": "pyspark.ml.torch.distributor.TorchDistributor",
                "global_batch_size": run.fit_config.batch_size,
                "per_process_batch_size": Shard(0, num_processes).batch_size(
                    run.fit_config.batch_size
                ),
                "data": "driver" if plan is None else "ranks",
                **({} if plan is None else {"row_groups": len(plan.groups)}),
            }
        },
    )


def fit_distributed(run: Run, spark: SparkSession, num_processes: int) -> Fitted:
    """Fit `run` with `num_processes` DDP ranks as Spark barrier tasks; rank 0's model back."""
    check_processes(num_processes, spark, len(run.train_set), run.spec_file, "training rows")
    state, history = _run_ranks(spark, run, num_processes)
    return rebuild(run, state, history)


def fit_shares(work: ParquetRun, spark: SparkSession, num_processes: int) -> tuple[Run, Fitted]:
    """Fit with ranks that read their own shares of the Parquet data; rank 0's model back, with
    the `Run` that describes the whole data set (no rows) for the export."""
    check_processes(num_processes, spark, work.plan.rows, work.spec_file, "rows")
    state, history, run = _run_ranks(spark, work, num_processes)
    return run, rebuild(run, state, history)


def _run_ranks(spark: SparkSession, work: Run | ParquetRun, num_processes: int) -> Any:
    """The ranks' barrier job; rank 0's answer, or its error raised."""
    spark_jobs = TaggedJobs(spark)
    with ThreadPoolExecutor(max_workers=1) as launcher:  # see TaggedJobs: a clean Ctrl-C
        future = launcher.submit(spark_jobs.tagged(_launch), spark, work, num_processes)
        try:
            output = future.result()
        except Exception as e:  # Py4J and pyspark wrap the workers' errors in several types
            raise DistributedError(worker_error(e)) from e
        except BaseException:  # Ctrl-C: stop the ranks before the error goes on
            spark_jobs.cancel()
            raise
    if output is None:
        raise DistributedError("the workers returned nothing (rank 0 did not finish)")
    if isinstance(output, RankFailed):
        if output.data:
            raise SpecError(output.error)
        raise DistributedError(f"rank {output.rank}: {output.error}")
    return output


def _launch(spark: SparkSession, work: Run | ParquetRun, num_processes: int) -> Any:
    """TorchDistributor's barrier job: one torchrun per Spark task, each calling `_rank`."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(
        num_processes=num_processes, local_mode=False, use_gpu=_spark_gives_gpus(spark)
    )
    return distributor.run(_rank, work)


def check_processes(
    num_processes: int, spark: SparkSession, rows: int, spec_file: Path, what: str
) -> None:
    """A barrier stage needs all its tasks at once: refuse more processes than task slots."""
    if num_processes < 1:
        raise SpecError(f"--num-processes must be at least 1, got {num_processes}")
    slots = task_slots(spark)
    if slots is not None and num_processes > slots:
        raise SpecError(
            f"--num-processes {num_processes} needs {num_processes} Spark task slots at once, "
            f"but {master_of(spark)} has {slots}"
        )
    if num_processes > rows:
        raise SpecError(f"{spec_file}: data: {rows} {what} cannot feed {num_processes} processes")


def _rank(run: Run | ParquetRun) -> tuple[Any, ...] | RankFailed:
    """One DDP process (started by torchrun in a Spark task): fit its shard; rank 0 reports
    its weights and history, and for a `ParquetRun` the `Run` that describes the whole data.

    A rank that fails returns its error. The others then fail too (their peer left the
    collective), so rank 0's answer always arrives, with the cause when rank 0 had it. A data
    error of a `ParquetRun` is found by every rank alike (see `training.row_groups`).
    """
    use_cuda = torch.cuda.is_available()  # only if Spark gave this task a GPU
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = None
        if use_cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)

        def wrap(model: nn.Module) -> nn.Module:
            # DDP broadcasts rank 0's weights; the seeded build makes them equal anyway.
            return DistributedDataParallel(model, device_ids=[device] if device else None)

        if isinstance(run, ParquetRun):
            share, shard = row_groups.load_share(run, rank, world, _all_gather)
            fitted = fit(share, shard=shard, wrap=wrap, device=device)
            return weights(fitted), fitted.history, share.without_rows()
        fitted = fit(run, shard=Shard(rank, world), wrap=wrap, device=device)
        return weights(fitted), fitted.history
    except SpecError as e:
        return RankFailed(dist.get_rank(), str(e), data=True)
    except Exception as e:  # returned to the driver, see RankFailed
        return RankFailed(dist.get_rank(), " ".join(f"{type(e).__name__}: {e}".split())[:500])
    finally:
        dist.destroy_process_group()


def _all_gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _spark_gives_gpus(spark: SparkSession) -> bool:
    """GPUs for the tasks only when Spark is configured to hand them out."""
    amount = spark.conf.get("spark.task.resource.gpu.amount", "0")
    return float(amount or 0) > 0
