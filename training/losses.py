"""Keras 3's loss functions, by name, in PyTorch, with Keras's numerics.

`get(name)` returns `(y_true, y_pred) -> scalar tensor`: the per-sample loss (reduced over the
last axis, as Keras does) averaged over the batch (Keras's `sum_over_batch_size`). Keras's
conventions are kept: predictions are probabilities (`from_logits=False`); crossentropies
renormalise the scores to sum to 1 and clip them to [1e-7, 1 - 1e-7]; hinge losses turn 0/1
labels into -1/1; `cosine_similarity` is the *negative* cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from training import vocabulary
from training.names import lookup

EPSILON = 1e-7
"""keras.config.epsilon()"""

Loss = Callable[[Tensor, Tensor], Tensor]


def mean_squared_error(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return torch.mean(torch.square(y_pred - y_true), dim=-1)


def mean_absolute_error(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return torch.mean(torch.abs(y_pred - y_true), dim=-1)


def mean_absolute_percentage_error(y_true: Tensor, y_pred: Tensor) -> Tensor:
    diff = torch.abs((y_true - y_pred) / torch.clamp(torch.abs(y_true), min=EPSILON))
    return 100.0 * torch.mean(diff, dim=-1)


def mean_squared_logarithmic_error(y_true: Tensor, y_pred: Tensor) -> Tensor:
    first = torch.log(torch.clamp(y_pred, min=EPSILON) + 1.0)
    second = torch.log(torch.clamp(y_true, min=EPSILON) + 1.0)
    return torch.mean(torch.square(first - second), dim=-1)


def _signed_labels(y_true: Tensor) -> Tensor:
    """Keras's hinge convention: labels that are all 0/1 become -1/1."""
    is_binary = torch.all((y_true == 0) | (y_true == 1))
    return torch.where(is_binary, 2.0 * y_true - 1.0, y_true)


def hinge(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return torch.mean(torch.clamp(1.0 - _signed_labels(y_true) * y_pred, min=0.0), dim=-1)


def squared_hinge(y_true: Tensor, y_pred: Tensor) -> Tensor:
    margin = torch.clamp(1.0 - _signed_labels(y_true) * y_pred, min=0.0)
    return torch.mean(torch.square(margin), dim=-1)


def categorical_hinge(y_true: Tensor, y_pred: Tensor) -> Tensor:
    pos = torch.sum(y_true * y_pred, dim=-1)
    neg = torch.amax((1.0 - y_true) * y_pred, dim=-1)
    return torch.clamp(neg - pos + 1.0, min=0.0)


def log_cosh(y_true: Tensor, y_pred: Tensor) -> Tensor:
    x = y_pred - y_true
    return torch.mean(x + F.softplus(-2.0 * x) - math.log(2.0), dim=-1)


def huber(y_true: Tensor, y_pred: Tensor, delta: float = 1.0) -> Tensor:
    abs_error = torch.abs(y_pred - y_true)
    quadratic = torch.clamp(abs_error, max=delta)
    linear = abs_error - quadratic
    return torch.mean(0.5 * torch.square(quadratic) + delta * linear, dim=-1)


def _renormalised_log(y_pred: Tensor) -> Tensor:
    """log of scores renormalised to sum to 1 and clipped, as Keras's crossentropies do."""
    probabilities = y_pred / torch.sum(y_pred, dim=-1, keepdim=True)
    return torch.log(torch.clamp(probabilities, EPSILON, 1.0 - EPSILON))


def categorical_crossentropy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return -torch.sum(y_true * _renormalised_log(y_pred), dim=-1)


def sparse_categorical_crossentropy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    if y_true.ndim == y_pred.ndim:
        y_true = y_true.squeeze(-1)
    log_p = _renormalised_log(y_pred)
    return -torch.gather(log_p, -1, y_true.long().unsqueeze(-1)).squeeze(-1)


def binary_crossentropy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    p = torch.clamp(y_pred, EPSILON, 1.0 - EPSILON)
    bce = y_true * torch.log(p) + (1.0 - y_true) * torch.log(1.0 - p)
    return -torch.mean(bce, dim=-1)


def kl_divergence(y_true: Tensor, y_pred: Tensor) -> Tensor:
    y_true = torch.clamp(y_true, EPSILON, 1.0)
    y_pred = torch.clamp(y_pred, EPSILON, 1.0)
    return torch.sum(y_true * torch.log(y_true / y_pred), dim=-1)


def poisson(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return torch.mean(y_pred - y_true * torch.log(y_pred + EPSILON), dim=-1)


def _l2_normalize(x: Tensor) -> Tensor:
    """keras.ops.normalize(order=2): `x * min(rsqrt(sum(x²)), 1/eps)`, so zero stays zero."""
    inverse_norm = torch.rsqrt(torch.sum(torch.square(x), dim=-1, keepdim=True))
    return x * torch.clamp(inverse_norm, max=1.0 / EPSILON)


def cosine_similarity(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return -torch.sum(_l2_normalize(y_true) * _l2_normalize(y_pred), dim=-1)


PER_SAMPLE: dict[str, Loss] = {
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "mae": mean_absolute_error,
    "mean_absolute_percentage_error": mean_absolute_percentage_error,
    "mape": mean_absolute_percentage_error,
    "mean_squared_logarithmic_error": mean_squared_logarithmic_error,
    "msle": mean_squared_logarithmic_error,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "categorical_hinge": categorical_hinge,
    "logcosh": log_cosh,
    "log_cosh": log_cosh,
    "huber": huber,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "kullback_leibler_divergence": kl_divergence,
    "kl_divergence": kl_divergence,
    "kld": kl_divergence,
    "poisson": poisson,
    "cosine_similarity": cosine_similarity,
    "cosine_proximity": cosine_similarity,
}

CLASSIFICATION = vocabulary.CLASSIFICATION_LOSSES
SPARSE = vocabulary.SPARSE_LOSSES
SIGNED_OUTPUT = vocabulary.SIGNED_OUTPUT_LOSSES
canonical = vocabulary.canonical_loss


def per_sample(name: str) -> Loss:
    """The loss of each sample, reduced over the last axis."""
    return lookup("loss", name, PER_SAMPLE)


def get(name: str) -> Loss:
    """Keras's loss `name` as `(y_true, y_pred) -> scalar`: the per-sample loss, batch mean."""
    fn = per_sample(name)
    sparse = canonical(name) in SPARSE

    def loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
        y_true = torch.as_tensor(y_true, dtype=None if sparse else y_pred.dtype)
        if not sparse and y_true.ndim == y_pred.ndim - 1:
            y_true = y_true.unsqueeze(-1)  # Keras expands (n,) targets against (n, 1) outputs
        return torch.mean(fn(y_true, y_pred))

    loss.__name__ = name
    return loss
