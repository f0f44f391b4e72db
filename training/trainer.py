"""Train a model from its spec and export the next version of its bundle.

    python -m training models/side_effects

The story of one run, in three steps that every way of training shares (one process here, one
rank of DistributedDataParallel in `training.distributed`, one trial in `training.tuning`):
1. `prepare`: read the spec; load and split the data (seeded);
2. `fit`: fit the scaler on the training rows; build the Keras-style network (seeded); fit it
   with Keras's loss, optimizer and metrics;
3. `export`: export scaler + network + class head to ONNX; check that onnxruntime reproduces
   PyTorch on the held-out rows; publish the bundle folder.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
from torch import Tensor, nn

from training import base_model, losses
from training import data as datasets
from training.export import ServingGraph, export_bundle, first_line
from training.fit import Batches, History, Shard, Trainer
from training.layer_specs import EmbeddingSpec
from training.network import Sequential
from training.optimizers import Optimizer
from training.plots import plot_history
from training.preprocessing import FeatureStats, Scaler
from training.progress import Progress
from training.spec import (
    SPEC_FILE,
    FitSpec,
    Spec,
    SpecError,
    load_spec,
    spec_sha256,
    units_fit_classes,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PARITY_RANDOM_ROWS = 256
PARITY_HELD_OUT_ROWS = 1024


@dataclass(frozen=True)
class TrainResult:
    bundle: Path
    history: History
    metrics: dict[str, float]


@dataclass(frozen=True)
class DataSummary:
    """What the fit and the export need of the whole data set: the rows on each side of the
    split, the training rows' statistics (the scaler's, and the range of the parity check's
    random rows) and the first held-out rows (the parity check's others)."""

    train_rows: int
    validation_rows: int
    stats: FeatureStats
    held_out: np.ndarray

    @classmethod
    def of(cls, train: datasets.Dataset, validation: datasets.Dataset) -> DataSummary:
        held_out = validation.features[:PARITY_HELD_OUT_ROWS]
        return cls(len(train), len(validation), FeatureStats.of(train.features), held_out)


@dataclass(frozen=True)
class Run:
    """Everything a fit needs, loaded once on the driver and small enough to ship to workers;
    or, on a rank that read its own share of the data (`training.row_groups`), that share, with
    the `summary` of the whole."""

    spec: Spec
    spec_file: Path
    fit_config: FitSpec
    classes: list[str] | None
    train_set: datasets.Dataset
    val_set: datasets.Dataset
    summary: DataSummary | None = None

    @property
    def seed(self) -> int:
        return self.spec.data.seed

    @property
    def whole(self) -> DataSummary:
        """The summary of the whole data set, which this run holds unless it has a summary."""
        return self.summary or DataSummary.of(self.train_set, self.val_set)

    def without_rows(self) -> Run:
        """This run with its summary and no rows: what a rank sends back to the driver."""
        none = np.arange(0)
        return dataclasses.replace(
            self,
            train_set=self.train_set.take(none),
            val_set=self.val_set.take(none),
            summary=self.whole,
        )


@dataclass(frozen=True)
class Fitted:
    """A trained network with its scaler, and the history of the fit."""

    network: Sequential
    scaler: Scaler
    history: History

    @property
    def model(self) -> nn.Sequential:
        return nn.Sequential(self.scaler, self.network)  # shares the parameters


def train(
    spec_path: str | Path,
    *,
    epochs: int | None = None,
    verbose: int | None = None,
    stream: TextIO | None = None,
) -> TrainResult:
    """Train the model of `spec_path` (a model folder or its model.yaml); export its bundle."""
    started = time.perf_counter()
    run = prepare(spec_path, epochs=epochs, verbose=verbose)
    fitted = fit(run, stream=stream)
    return export(run, fitted, started=started)


def prepare(
    spec_path: str | Path,
    *,
    epochs: int | None = None,
    verbose: int | None = None,
    spark: SparkSession | None = None,
) -> Run:
    """Read the spec, apply the command-line overrides, load and split its data (seeded)."""
    spec, spec_file = load_spec(spec_path)
    return prepare_spec(spec, spec_file, epochs=epochs, verbose=verbose, spark=spark)


def prepare_spec(
    spec: Spec,
    spec_file: Path,
    *,
    epochs: int | None = None,
    verbose: int | None = None,
    spark: SparkSession | None = None,
    data: datasets.Dataset | None = None,
) -> Run:
    """`prepare` for a spec already parsed (a search trial); `data` skips loading it again."""
    if data is None:
        data = datasets.load(spec, spec_file, spark=spark)
    train_set, val_set = datasets.split(data, spec.validation_split, spec.data.seed)
    if len(train_set) == 0:
        raise SpecError(f"{spec_file}: data: no training rows left after the validation split")
    config = fit_config(spec, epochs=epochs, verbose=verbose)
    return Run(spec, spec_file, config, data.classes, train_set, val_set)


def fit_config(spec: Spec, *, epochs: int | None, verbose: int | None) -> FitSpec:
    """The spec's `fit` section with the command line's overrides."""
    overrides = {"epochs": epochs, "verbose": verbose}
    return spec.fit.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def fit(
    run: Run,
    *,
    shard: Shard | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    device: torch.device | None = None,
    stream: TextIO | None = None,
) -> Fitted:
    """Build the seeded network and fit it; `shard` and `wrap` make it one rank of DDP.

    `device` (a GPU) holds the model and the whole data set, which is small by design. The
    scaler is fitted on all training rows, also when this rank holds only its share of them.
    """
    spec, shard = run.spec, shard or Shard()
    scaler = Scaler.from_stats(spec.preprocessing.scale, run.whole.stats)
    torch.manual_seed(run.seed)  # the same initial weights on every run and every rank
    network = Sequential(spec.network, run.train_set.features.shape[1])
    if spec.network.base is not None:
        scaler = start_from_base(spec, run.spec_file, network)
    model: nn.Module = nn.Sequential(scaler, network)  # what is trained is what is exported
    units = network.out_features
    _check_classes(spec, run.spec_file, run.classes, units)
    if device is not None:
        model = model.to(device)
    if wrap is not None:
        model = wrap(model)

    config = run.fit_config
    rows = shard.rows(len(run.train_set))
    steps = -(-rows // shard.batch_size(config.batch_size))
    optimizer = spec.compile.optimizer
    trainer = Trainer(
        model=model,
        loss=losses.get(spec.compile.loss),
        optimizer=Optimizer(optimizer.name, optimizer.params, model.parameters()),
        metric_names=spec.compile.metrics,
        config=config,
        generator=torch.Generator().manual_seed(run.seed),
        progress=Progress(config.verbose if shard.rank == 0 else 0, config.epochs, steps, stream),
        shard=shard,
    )
    history = trainer.fit(
        _batches(run.train_set, spec, units, device), _batches(run.val_set, spec, units, device)
    )
    return Fitted(network.cpu(), scaler.cpu(), history)


def start_from_base(spec: Spec, spec_file: Path, network: Sequential) -> Scaler:
    """Load the base model's trained layers into `network` (frozen unless `trainable`), and
    return the base's scaler, which the data must go through (see `training.base_model`)."""
    given = spec.network.base
    assert given is not None
    try:
        base = base_model.resolve(given.model_dump(exclude_none=True), spec_file)
    except ValueError as e:  # the base changed since the spec was read
        raise SpecError(f"{spec_file}: {e}") from None
    with np.load(base.folder / base_model.WEIGHTS_FILE, allow_pickle=False) as stored:
        state = {key: stored[key] for key in stored.files}
    names = {str(layer["name"]) for layer in base.layers}
    wanted = [key for key in network.state_dict() if key.split(".")[1] in names]
    missing = [key for key in wanted if f"network.{key}" not in state]
    if missing:
        raise SpecError(
            f"{spec_file}: model.base: {base.folder / base_model.WEIGHTS_FILE} has no "
            f"{missing[0]!r}; retrain the base"
        )
    try:
        network.load_state_dict(
            {key: torch.as_tensor(state[f"network.{key}"]) for key in wanted}, strict=False
        )
    except RuntimeError as e:  # a weight of another shape
        raise SpecError(f"{spec_file}: model.base: {first_line(e)}") from None
    network.freeze(set(spec.network.frozen_layers))
    return Scaler(base.scale, state["scaler.offset"], state["scaler.scale"])  # type: ignore[arg-type]


def rebuild(run: Run, state: Mapping[str, np.ndarray], history: History) -> Fitted:
    """The network a worker trained, re-created on the driver from its weights."""
    scaler = Scaler.from_stats(run.spec.preprocessing.scale, run.whole.stats)
    network = Sequential(run.spec.network, run.train_set.features.shape[1])
    nn.Sequential(scaler, network).load_state_dict(
        {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
    )
    return Fitted(network, scaler, history)


def weights(fitted: Fitted) -> dict[str, np.ndarray]:
    """The trained state as numpy arrays: what a worker sends back to the driver."""
    return {k: v.detach().cpu().numpy().copy() for k, v in fitted.model.state_dict().items()}


def export(
    run: Run,
    fitted: Fitted,
    *,
    started: float,
    provenance: Mapping[str, Any] | None = None,
    extras: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Export the next version of the bundle, with the parity check; `extras` adds files."""
    spec, spec_file, history, whole = run.spec, run.spec_file, fitted.history, run.whole
    graph = ServingGraph(
        fitted.network,
        fitted.scaler,
        spec.data.features,
        classes=run.classes,
        decision_threshold=0.0 if spec.compile.loss in losses.SIGNED_OUTPUT else 0.5,
    )

    def write_files(plot_path: Path) -> None:  # called with the staging folder's training.png
        plot_history(history.columns, plot_path, spec.name)
        weights = {key: value.cpu().numpy() for key, value in graph.state_dict().items()}
        np.savez(plot_path.parent / base_model.WEIGHTS_FILE, **weights)  # a base for others
        if extras is not None:
            extras(plot_path.parent)

    bundle = export_bundle(
        graph,
        spec_file.parent,
        name=spec.name,
        description=spec.description,
        parity_rows=parity_rows(whole, run.seed, ids=token_ids(spec)),
        metrics=history.final,
        history=history.columns,
        provenance={
            "source": "spec",
            "spec_file": SPEC_FILE,
            "spec_sha256": spec_sha256(spec_file),
            "spec": spec.model_dump(mode="json", by_alias=True),
            "rows": {"train": whole.train_rows, "validation": whole.validation_rows},
            "epochs_run": len(history.epochs),
            "duration_s": round(time.perf_counter() - started, 3),
            **({"base": _base_provenance(spec, spec_file)} if spec.network.base else {}),
            **(provenance or {}),
        },
        plot=write_files,
    )
    return TrainResult(bundle, history, history.final)


def _base_provenance(spec: Spec, spec_file: Path) -> dict[str, Any]:
    given = spec.network.base
    assert given is not None
    base = base_model.resolve(given.model_dump(exclude_none=True), spec_file)
    return base.provenance(given.until, given.trainable)


def targets(labels: np.ndarray, spec: Spec, units: int) -> Tensor:
    """Labels in the form the loss takes: class indices, 0/1 per unit, one-hot, or values."""
    if not spec.is_classifier:
        return torch.as_tensor(labels, dtype=torch.float32)
    indices = torch.as_tensor(labels, dtype=torch.int64)
    if spec.compile.loss in losses.SPARSE:
        return indices
    if units == 1:
        return indices.to(torch.float32).unsqueeze(-1)
    return nn.functional.one_hot(indices, units).to(torch.float32)


def parity_rows(data: DataSummary, seed: int, *, ids: int | None = None) -> np.ndarray:
    """Held-out rows plus random rows spanning the training range and 10% beyond it; for a
    network that starts with an embedding, random token ids below `ids` instead."""
    rng = np.random.default_rng(seed)
    size = (PARITY_RANDOM_ROWS, len(data.stats.low))
    held_out = data.held_out
    if ids is not None:
        random = rng.integers(0, ids, size=size).astype(np.float64)
    else:
        low, high = data.stats.low.astype(np.float32), data.stats.high.astype(np.float32)
        margin = 0.1 * (high - low)
        random = rng.uniform(low - margin, high + margin, size=size)
    return np.concatenate([held_out[:PARITY_HELD_OUT_ROWS], random]).astype(np.float32)


def token_ids(spec: Spec) -> int | None:
    """The embedding's `input_dim` when the network starts with one (its inputs are ids)."""
    first = spec.network.layers[0]
    return first.input_dim if isinstance(first, EmbeddingSpec) else None


def _batches(
    data: datasets.Dataset, spec: Spec, units: int, device: torch.device | None
) -> Batches:
    x = torch.as_tensor(data.features, dtype=torch.float32)
    y = targets(data.labels, spec, units)
    return Batches(x, y) if device is None else Batches(x.to(device), y.to(device))


def _check_classes(spec: Spec, spec_file: Path, classes: list[str] | None, units: int) -> None:
    if classes is None:
        if spec.is_classifier:
            raise SpecError(f"{spec_file}: data.classes: could not determine the classes")
        label_count = 1 if isinstance(spec.data.label, str) else len(spec.data.label)
        if label_count != units:
            raise SpecError(
                f"{spec_file}: model.layers: the last layer has {units} unit(s) but "
                f"data.label names {label_count} column(s)"
            )
        return
    if not units_fit_classes(units, len(classes)):
        raise SpecError(
            f"{spec_file}: model.layers: the last layer has {units} unit(s) for "
            f"{len(classes)} classes ({', '.join(classes)}); expected {len(classes)}"
        )
