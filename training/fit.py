"""The training loop: Keras's `model.fit` semantics on a PyTorch module.

Per epoch: shuffle (seeded), step through mini-batches, report the running sample-weighted
means of the loss and metrics (as Keras's progress bar does), then evaluate the validation rows
in inference mode. Early stopping follows `keras.callbacks.EarlyStopping`, except that
`restore_best_weights` restores the best epoch whenever training ends, not only when it stopped
early (the surprise of Keras 2 that users asked to have removed).

Under DistributedDataParallel (`Shard` with `world > 1`) each rank steps through its share of
every epoch's shuffled rows, with the global batch (`fit.batch_size`) split across the ranks;
the training logs are summed over all ranks, and every rank evaluates the whole validation set.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training import metrics as metric_registry
from training.errors import DivergedError
from training.losses import Loss
from training.optimizers import Optimizer
from training.progress import Progress
from training.spec import EarlyStoppingSpec, FitSpec

EVAL_BATCH = 8192


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    """0-based epoch whose weights were kept (early stopping with restore), else the last."""

    @property
    def columns(self) -> dict[str, list[float]]:
        return {k: [e[k] for e in self.epochs] for k in (self.epochs[0] if self.epochs else {})}

    @property
    def final(self) -> dict[str, float]:
        """The logs of the epoch whose weights the model ends with."""
        index = self.best_epoch if self.best_epoch is not None else len(self.epochs) - 1
        return dict(self.epochs[index])


@dataclass
class Batches:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel fit: rank `rank` of `world` (1: not distributed).

    Like torch's `DistributedSampler`: every rank draws the same seeded permutation of the
    training rows each epoch, pads it (wrapping around) to a multiple of `world`, and takes
    every `world`-th row from its rank on. All ranks thus run the same number of steps, which
    DDP needs (a rank with one step more would wait forever for the others' gradients).
    """

    rank: int = 0
    world: int = 1

    def rows(self, n: int) -> int:
        return -(-n // self.world)

    def batch_size(self, global_batch: int) -> int:
        """Per rank: the global batch split across ranks (rounded up), so that one optimizer
        step sees `fit.batch_size` rows in all, as in single-process training."""
        return -(-global_batch // self.world)

    def take(self, order: Tensor) -> Tensor:
        if self.world == 1:
            return order
        padded = torch.cat([order, order[: self.rows(len(order)) * self.world - len(order)]])
        return padded[self.rank :: self.world]

    def sum(self, totals: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        """Sums of the training logs over all ranks."""
        if self.world == 1:
            return totals, seen
        values = torch.tensor([*totals.values(), float(seen)], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(totals, values[:-1].tolist(), strict=True)), int(values[-1].item())

    def agree(self, logs: dict[str, float]) -> dict[str, float]:
        """Rank 0's logs on every rank, so early stopping decides alike everywhere."""
        if self.world == 1:
            return logs
        values = torch.tensor(list(logs.values()), dtype=torch.float64)
        dist.broadcast(values, src=0)
        return dict(zip(logs, values.tolist(), strict=True))


@dataclass
class Trainer:
    """A model with what `compile` and `fit` configure: loss, optimizer, metrics, schedule."""

    model: nn.Module
    loss: Loss
    optimizer: Optimizer
    metric_names: list[str]
    config: FitSpec
    generator: torch.Generator
    progress: Progress
    metric_fns: dict[str, metric_registry.Metric] = field(default_factory=dict)
    shard: Shard = field(default_factory=Shard)

    def fit(self, train: Batches, validation: Batches | None) -> History:
        with torch.no_grad():
            sample_output = self.model.eval()(train.x[:2])
        self.metric_fns = {
            name: metric_registry.resolve(name, train.y.shape, sample_output.shape)
            for name in self.metric_names
        }
        stopping = self.config.early_stopping
        stopper = EarlyStopping(stopping, self.model) if stopping else None
        history = History()
        for epoch in range(self.config.epochs):
            self.progress.epoch_begin(epoch)
            logs = self.train_epoch(train)
            if validation is not None and len(validation):
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation).items()})
            logs = self.shard.agree(logs)
            history.epochs.append(logs)
            self.progress.epoch_end(epoch, logs)
            check_finite(epoch, logs)
            if stopper is not None and stopper.update(epoch, logs):
                self.progress.message(f"Epoch {epoch + 1}: early stopping")
                break
        if stopper is not None and stopper.restore():
            history.best_epoch = stopper.best_epoch
            self.progress.message(
                f"Restoring model weights from the end of the best epoch: {stopper.best_epoch + 1}."
            )
        return history

    def train_epoch(self, data: Batches) -> dict[str, float]:
        self.model.train()
        n, batch_size = len(data), self.shard.batch_size(self.config.batch_size)
        order = torch.randperm(n, generator=self.generator) if self.config.shuffle else None
        if self.shard.world > 1:
            order = self.shard.take(order if order is not None else torch.arange(n))
            n = len(order)
        totals: dict[str, float] = defaultdict(float)
        seen = 0
        for step, start in enumerate(range(0, n, batch_size), start=1):
            index = (
                order[start : start + batch_size]
                if order is not None
                else slice(start, start + batch_size)
            )
            x, y = data.x[index], data.y[index]
            self.optimizer.zero_grad()
            output = self.model(x)
            loss = self.loss(y, output)
            loss.backward()  # type: ignore[no-untyped-call]  # DDP averages gradients here
            self.optimizer.step()
            self._accumulate(totals, loss, y, output)
            seen += len(x)
            self.progress.step(step, {k: v / seen for k, v in totals.items()})
        totals, seen = self.shard.sum(dict(totals), seen)
        return {k: v / seen for k, v in totals.items()}

    def evaluate(self, data: Batches) -> dict[str, float]:
        """Loss and metrics over `data` in inference mode (dropout off, running statistics)."""
        self.model.eval()
        totals: dict[str, float] = defaultdict(float)
        with torch.no_grad():
            for start in range(0, len(data), EVAL_BATCH):
                y = data.y[start : start + EVAL_BATCH]
                output = self.model(data.x[start : start + EVAL_BATCH])
                self._accumulate(totals, self.loss(y, output), y, output)
        return {k: v / len(data) for k, v in totals.items()}

    def _accumulate(
        self, totals: dict[str, float], loss: Tensor, y: Tensor, output: Tensor
    ) -> None:
        """Add a batch's loss and metric sums (sample-weighted, as Keras's `Mean` metrics)."""
        with torch.no_grad():
            totals["loss"] += loss.item() * len(y)
            for name, fn in self.metric_fns.items():
                totals[name] += fn(y, output).sum().item()


def check_finite(epoch: int, logs: dict[str, float]) -> None:
    """Keras's `TerminateOnNaN`, but an error: a model whose loss is nan or inf would be
    published and answer every request with the same class. Checked on the logs every rank
    agreed on, so that all ranks of a distributed run stop together."""
    if not math.isfinite(logs["loss"]):
        bad = [f"{name} {value}" for name, value in logs.items() if not math.isfinite(value)]
        raise DivergedError(
            f"training diverged at epoch {epoch + 1}: {', '.join(bad)}; no bundle was written "
            "(lower compile.optimizer.learning_rate, or scale the features: preprocessing.scale)"
        )


class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    def __init__(self, config: EarlyStoppingSpec, model: nn.Module):
        self.config = config
        self.model = model
        mode = config.mode
        if mode == "auto":
            mode = "max" if "acc" in config.monitor or config.monitor.endswith("auc") else "min"
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None
        self.wait = 0

    def update(self, epoch: int, logs: dict[str, float]) -> bool:
        """Record an epoch; True when training should stop."""
        value = self.sign * logs[self.config.monitor]
        if value - self.config.min_delta > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.config.restore_best_weights:
                self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        self.wait += 1
        return self.wait >= self.config.patience and epoch > 0

    def restore(self) -> bool:
        if not self.config.restore_best_weights or self.best_state is None:
            return False
        self.model.load_state_dict(self.best_state)
        return True
