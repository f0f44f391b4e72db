"""Export any PyTorch `nn.Module` to a bundle, with the same signature and parity check.

A tabular module (a float batch `[rows, features]` of named features):

import torch
from training import Scaler, export_module

net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
...  # train it your way, on scaled features
export_module(
    net, "models/my_iris",
    feature_names=["sepal_length", "sepal_width", "petal_length", "petal_width"],
    classes=["setosa", "versicolor", "virginica"],
    preprocessing=Scaler.fit("standard", x_train),  # baked into the graph
    output_activation="softmax",                    # the module returns logits
    sample_inputs=x_test,                           # raw rows for the parity check
)

Any other module (several inputs, any rank, integer or float tensors): one batch of every input
by name, and the axes other than the batch axis that may change size (`tensor_export.py`):

export_module(
    net, "models/tokens",
    sample_inputs={"input_ids": ids, "attention_mask": mask},   # int64 [rows, length]
    output_names=["logits"],
    dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training import activations
from training.activations import Activation
from training.errors import ExportError
from training.export import ServingGraph, export_bundle
from training.names import UnknownNameError
from training.preprocessing import Scaler
from training.spec import units_fit_classes
from training.tensor_args import AxesSpec
from training.tensor_export import export_tensors

DEFAULT_SAMPLE_ROWS = 256


def export_module(
    module: nn.Module,
    model_dir: str | Path,
    *,
    feature_names: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    preprocessing: Scaler | None = None,
    output_activation: str | None = None,
    sample_inputs: Any = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: AxesSpec | None = None,
    name: str | None = None,
    description: str = "",
    metrics: Mapping[str, float] | None = None,
    decision_threshold: float = 0.5,
) -> Path:
    """Write the next version of `model_dir` from a trained module; returns the version folder.

    With `feature_names` the module is tabular: it takes a float32 batch
    `(rows, len(feature_names))` of *scaled* features (after `preprocessing`, if given) and
    returns `(rows, outputs)`; `sample_inputs` are raw rows for the parity check (random rows
    around the scaler's range without them). Without `feature_names`, `sample_inputs` is a dict
    of input name → array, one batch of every input (any rank, float, integer or bool), bound
    to `forward`'s parameters by name where they are all its parameters and in order otherwise;
    `output_names` names the module's outputs (a tensor, a tuple or a dict of them) and
    `dynamic_axes` the axes besides the batch axis that may change size, per input or output.
    With `classes` the bundle is a classifier: the first output is class scores (one column per
    class, or one for two classes) and the graph adds the predicted class index.
    `output_activation` (a Keras name, e.g. `softmax`) is appended in the graph to the first
    output, for modules that return logits.
    """
    model_dir = Path(model_dir)
    try:
        activation = activations.get(output_activation) if output_activation else None
    except UnknownNameError as e:
        raise ExportError(f"output_activation: {e}") from e
    if feature_names is None:
        if preprocessing is not None:
            raise ExportError(
                "preprocessing (a Scaler) scales tabular features: pass feature_names and "
                "rows, or scale inside the module"
            )
        return export_tensors(
            module,
            model_dir,
            sample_inputs=sample_inputs,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            classes=classes,
            output_activation=activation,
            decision_threshold=decision_threshold,
            name=name or model_dir.name,
            description=description,
            metrics=metrics or {},
        )
    if output_names is not None or dynamic_axes is not None:
        raise ExportError(
            "output_names and dynamic_axes are for a module of named tensors (sample_inputs as "
            "a dict, no feature_names); a tabular bundle's outputs are scores and class_index, "
            "or predictions"
        )
    return _export_tabular(
        module,
        model_dir,
        list(feature_names),
        classes=classes,
        preprocessing=preprocessing,
        activation=activation,
        sample_inputs=sample_inputs,
        name=name or model_dir.name,
        description=description,
        metrics=dict(metrics or {}),
        decision_threshold=decision_threshold,
    )


def _export_tabular(
    module: nn.Module,
    model_dir: Path,
    features: list[str],
    *,
    classes: Sequence[str] | None,
    preprocessing: Scaler | None,
    activation: Activation | None,
    sample_inputs: Any,
    name: str,
    description: str,
    metrics: dict[str, float],
    decision_threshold: float,
) -> Path:
    if isinstance(sample_inputs, Mapping):
        raise ExportError(
            "feature_names describe one [rows, features] input: pass sample_inputs as rows, "
            "or leave feature_names out for a module of named tensors"
        )
    scaler = preprocessing or Scaler("none", np.zeros(len(features)), np.ones(len(features)))
    graph = ServingGraph(
        module,
        scaler,
        features,
        classes=classes,
        output_activation=activation,
        decision_threshold=decision_threshold,
    )
    rows = _sample_rows(sample_inputs, scaler, len(features))
    _check_outputs(graph, rows, classes)
    return export_bundle(
        graph,
        model_dir,
        name=name,
        description=description,
        parity_rows=rows,
        metrics=metrics,
        provenance={"source": "module", "rows": {"parity": len(rows)}},
    )


def _sample_rows(sample_inputs: Any, scaler: Scaler, n_features: int) -> np.ndarray:
    if sample_inputs is not None:
        rows = np.asarray(sample_inputs, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != n_features or len(rows) < 2:
            raise ExportError(
                f"sample_inputs must be at least 2 rows of {n_features} features, got shape "
                f"{list(rows.shape)}"
            )
        return rows
    # Standard-normal rows in the scaled space, mapped back to raw feature values.
    z = np.random.default_rng(0).standard_normal((DEFAULT_SAMPLE_ROWS, n_features))
    raw: np.ndarray = (z / scaler.scale.numpy() + scaler.offset.numpy()).astype(np.float32)
    return raw


def _check_outputs(graph: ServingGraph, rows: np.ndarray, classes: Sequence[str] | None) -> None:
    """Run the module once so a shape mistake is a clear error, not an exporter traceback."""
    graph.eval()
    try:
        with torch.no_grad():
            output = graph(torch.from_numpy(rows[:2]))[0]
    except Exception as e:  # any error inside the user's forward()
        raise ExportError(
            f"the module failed on a batch of shape [2, {rows.shape[1]}] "
            f"({len(graph.feature_names)} feature names): {e}"
        ) from e
    if output.ndim != 2:
        raise ExportError(f"the module must return (rows, outputs); got shape {list(output.shape)}")
    if classes is not None:
        width, n = output.shape[1], len(classes)
        if not units_fit_classes(width, n):
            raise ExportError(
                f"the module returns {width} score column(s) for {n} classes; expected {n}"
            )
