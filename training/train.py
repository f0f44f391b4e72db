"""Train a model from its spec and export the next version of its bundle.

    python -m training models/side_effects

The story of one run: read the spec; load and split the data (seeded); fit the scaler on the
training rows; build the Keras-style network; fit it with Keras's loss, optimizer and metrics;
export scaler + network + class head to ONNX; check that onnxruntime reproduces PyTorch on the
held-out rows; publish the bundle folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import Tensor, nn

from training import data as datasets
from training import losses
from training.export import ServingGraph, export_bundle
from training.fit import Batches, History, Trainer
from training.network import Sequential
from training.optimizers import Optimizer
from training.plots import plot_history
from training.preprocessing import Scaler
from training.progress import Progress
from training.spec import SPEC_FILE, Spec, SpecError, load_spec, spec_sha256, units_fit_classes

PARITY_RANDOM_ROWS = 256
PARITY_HELD_OUT_ROWS = 1024


@dataclass(frozen=True)
class TrainResult:
    bundle: Path
    history: History
    metrics: dict[str, float]


def train(
    spec_path: str | Path,
    *,
    epochs: int | None = None,
    verbose: int | None = None,
    stream: TextIO | None = None,
) -> TrainResult:
    """Train the model of `spec_path` (a model folder or its model.yaml); export its bundle."""
    started = time.perf_counter()
    spec, spec_file = load_spec(spec_path)
    fit_config = spec.fit.model_copy(
        update={k: v for k, v in {"epochs": epochs, "verbose": verbose}.items() if v is not None}
    )
    seed = spec.data.seed
    torch.manual_seed(seed)

    data = datasets.load(spec, spec_file)
    train_set, val_set = datasets.split(data, spec.validation_split, seed)
    if len(train_set) == 0:
        raise SpecError(f"{spec_file}: data: no training rows left after the validation split")

    scaler = Scaler.fit(spec.preprocessing.scale, train_set.features)
    network = Sequential(spec.network, len(spec.data.features))
    model = nn.Sequential(scaler, network)  # what is trained is what is exported
    units = network.out_features
    _check_classes(spec, spec_file, data.classes, units)

    steps = -(-len(train_set) // fit_config.batch_size)
    optimizer = spec.compile.optimizer
    trainer = Trainer(
        model=model,
        loss=losses.get(spec.compile.loss),
        optimizer=Optimizer(optimizer.name, optimizer.params, model.parameters()),
        metric_names=spec.compile.metrics,
        config=fit_config,
        generator=torch.Generator().manual_seed(seed),
        progress=Progress(fit_config.verbose, fit_config.epochs, steps, stream),
    )
    history = trainer.fit(
        Batches(_features(train_set), targets(train_set.labels, spec, units)),
        Batches(_features(val_set), targets(val_set.labels, spec, units)),
    )

    graph = ServingGraph(
        network,
        scaler,
        spec.data.features,
        classes=data.classes,
        decision_threshold=0.0 if spec.compile.loss in losses.SIGNED_OUTPUT else 0.5,
    )
    bundle = export_bundle(
        graph,
        spec_file.parent,
        name=spec.name,
        description=spec.description,
        parity_rows=parity_rows(train_set.features, val_set.features, seed),
        metrics=history.final,
        history=history.columns,
        provenance={
            "source": "spec",
            "spec_file": SPEC_FILE,
            "spec_sha256": spec_sha256(spec_file),
            "spec": spec.model_dump(mode="json", by_alias=True),
            "rows": {"train": len(train_set), "validation": len(val_set)},
            "epochs_run": len(history.epochs),
            "duration_s": round(time.perf_counter() - started, 3),
        },
        plot=lambda path: plot_history(history.columns, path, spec.name),
    )
    return TrainResult(bundle, history, history.final)


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


def parity_rows(train: np.ndarray, held_out: np.ndarray, seed: int) -> np.ndarray:
    """Held-out rows plus random rows spanning the training range and 10% beyond it."""
    low, high = train.min(axis=0), train.max(axis=0)
    margin = 0.1 * (high - low)
    rng = np.random.default_rng(seed)
    random = rng.uniform(low - margin, high + margin, size=(PARITY_RANDOM_ROWS, train.shape[1]))
    return np.concatenate([held_out[:PARITY_HELD_OUT_ROWS], random]).astype(np.float32)


def _features(data: datasets.Dataset) -> Tensor:
    return torch.as_tensor(data.features, dtype=torch.float32)


def _check_classes(spec: Spec, spec_file: Path, classes: list[str] | None, units: int) -> None:
    if classes is None:
        if spec.is_classifier:
            raise SpecError(f"{spec_file}: data.classes: could not determine the classes")
        label_count = 1 if isinstance(spec.data.label, str) else len(spec.data.label)
        if label_count != units:
            raise SpecError(
                f"{spec_file}: model.layers: the last dense layer has {units} unit(s) but "
                f"data.label names {label_count} column(s)"
            )
        return
    if not units_fit_classes(units, len(classes)):
        raise SpecError(
            f"{spec_file}: model.layers: the last dense layer has {units} unit(s) for "
            f"{len(classes)} classes ({', '.join(classes)}); expected {len(classes)}"
        )
