"""Keras metrics by name, as per-sample functions that the training loop averages over an epoch.

`"accuracy"` (or `"acc"`) is resolved as Keras's `compile` does, from the shapes alone: one
output unit → binary accuracy (threshold 0.5); class-index targets → sparse categorical
accuracy; otherwise categorical accuracy. Every loss name is also a metric, as in Keras.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from training import losses, vocabulary
from training.names import lookup

Metric = Callable[[Tensor, Tensor], Tensor]
"""(y_true, y_pred) -> one value per sample."""


def binary_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return torch.mean((y_true == (y_pred > 0.5).to(y_true.dtype)).float(), dim=-1)


def categorical_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return (torch.argmax(y_true, dim=-1) == torch.argmax(y_pred, dim=-1)).float()


def sparse_categorical_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    if y_true.ndim == y_pred.ndim:
        y_true = y_true.squeeze(-1)
    return (y_true.long() == torch.argmax(y_pred, dim=-1)).float()


METRICS: dict[str, Metric] = {
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    **losses.PER_SAMPLE,
}


def resolve(name: str, target_shape: torch.Size, output_shape: torch.Size) -> Metric:
    """The per-sample function for `name`, given the target and output shapes."""
    if name.lower() not in vocabulary.ACCURACY:
        return lookup("metric", name, METRICS)
    if output_shape[-1] == 1:
        return binary_accuracy
    if len(target_shape) < len(output_shape) or target_shape[-1] == 1:
        return sparse_categorical_accuracy
    return categorical_accuracy
