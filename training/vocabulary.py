"""The Keras names a spec may use (activations, losses, metrics, optimizers and their
parameters), without torch.

A spec is checked against these names before anything heavy loads, so that a misspelt loss or an
unknown optimizer parameter is a one-line error in well under a second. The PyTorch
implementations (`activations`, `losses`, `metrics`, `optimizers`) are keyed by the same names;
tests/training/test_vocabulary.py keeps the two sides equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from training.names import lookup
from training.sections import wrong_type

ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "elu",
        "selu",
        "softplus",
        "softsign",
        "leaky_relu",
        "gelu",
        "silu",
        "swish",
        "mish",
        "exponential",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
    }
)

LOSSES: dict[str, str] = {
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
    "mean_absolute_error": "mean_absolute_error",
    "mae": "mean_absolute_error",
    "mean_absolute_percentage_error": "mean_absolute_percentage_error",
    "mape": "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error": "mean_squared_logarithmic_error",
    "msle": "mean_squared_logarithmic_error",
    "hinge": "hinge",
    "squared_hinge": "squared_hinge",
    "categorical_hinge": "categorical_hinge",
    "logcosh": "logcosh",
    "log_cosh": "logcosh",
    "huber": "huber",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "kullback_leibler_divergence": "kullback_leibler_divergence",
    "kl_divergence": "kullback_leibler_divergence",
    "kld": "kullback_leibler_divergence",
    "poisson": "poisson",
    "cosine_similarity": "cosine_similarity",
    "cosine_proximity": "cosine_similarity",
}
"""Every loss name and alias → its long Keras name (the first spelling of each function)."""

CLASSIFICATION_LOSSES = frozenset(
    {
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "binary_crossentropy",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
    }
)
"""Losses that make a model a classifier."""

SPARSE_LOSSES = frozenset({"sparse_categorical_crossentropy"})
"""Losses that take class indices instead of one-hot or per-unit targets."""

SIGNED_OUTPUT_LOSSES = frozenset({"hinge", "squared_hinge"})
"""Losses whose single-unit output is a signed margin (class 1 above 0, not above 0.5)."""

ACCURACY = ("accuracy", "acc")
"""Keras's shape-dependent metric names: binary, sparse or categorical accuracy."""

METRICS = frozenset(
    {"binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", *LOSSES}
)
"""Metrics by their own name (every loss is a metric too); ACCURACY besides."""

OPTIMIZERS: dict[str, dict[str, float | bool]] = {
    "sgd": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "adam": {
        "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False,
    },
    "adamw": {
        "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False,
        "weight_decay": 0.004,
    },
    "rmsprop": {
        "learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False,
    },
    "adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
    "adadelta": {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7},
    "nadam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    "adamax": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
}  # fmt: skip
"""Each optimizer's own parameters with Keras's defaults."""

OPTIMIZER_COMMON: dict[str, float | None] = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
}
"""Parameters every Keras optimizer takes (None: off)."""

_OPTIMIZER_ALIASES = {"lr": "learning_rate"}
_BOOLEAN = frozenset({"nesterov", "amsgrad", "centered"})


def check_activation(name: str) -> str:
    """`name` if Keras knows the activation; the error lists the known ones."""
    lookup("activation", name, dict.fromkeys(ACTIVATIONS, name))
    return name


def canonical_loss(name: str) -> str:
    """The long Keras name of a loss or alias ('mse' → 'mean_squared_error')."""
    return lookup("loss", name, LOSSES)


def check_metric(name: str) -> str:
    """`name` if Keras knows the metric; returned unchanged."""
    lookup("metric", name, dict.fromkeys([*ACCURACY, *METRICS], name))
    return name


def optimizer_config(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Keras's parameters for optimizer `name`: aliases resolved, checked, defaults filled in."""
    allowed = {**OPTIMIZER_COMMON, **lookup("optimizer", name, OPTIMIZERS)}
    result: dict[str, Any] = dict(allowed)
    for key, value in params.items():
        key = _OPTIMIZER_ALIASES.get(key, key)
        if key not in allowed:
            raise ValueError(
                f"unknown parameter {key!r} for optimizer {name!r}; known: {', '.join(allowed)}"
            )
        if value is None and key not in OPTIMIZER_COMMON:
            raise ValueError(f"{key} {wrong_type('a number', value)}")
        if key in _BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"{key} {wrong_type('true or false', value)}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key} {wrong_type('a number', value)}")
        elif value is not None and not math.isfinite(value):
            raise ValueError(f"{key} {wrong_type('a finite number', value)}")
        elif value is not None and value < 0:
            raise ValueError(f"{key} must not be negative, got {value!r}")
        result[key] = value
    if sum(result[k] is not None for k in ("clipnorm", "clipvalue", "global_clipnorm")) > 1:
        raise ValueError("set at most one of clipnorm, clipvalue and global_clipnorm")
    return result
