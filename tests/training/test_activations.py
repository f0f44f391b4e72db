"""Each activation against its formula (Keras 3's definitions) on a grid of inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import activations
from training.names import UnknownNameError

X = np.linspace(-5, 5, 41)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6 + 0.5, 0, 1)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805
FORMULAS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "softmax": softmax,
    "log_softmax": lambda x: np.log(softmax(x)),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(x) - 1)),
    "softplus": softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "silu": lambda x: x * sigmoid(x),
    "swish": lambda x: x * sigmoid(x),
    "mish": lambda x: x * np.tanh(softplus(x)),
    "exponential": np.exp,
    "hard_sigmoid": hard_sigmoid,
    "hard_silu": lambda x: x * hard_sigmoid(x),
    "hard_swish": lambda x: x * hard_sigmoid(x),
}


def test_every_activation_has_a_formula_here():
    assert set(FORMULAS) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_formula(name: str):
    got = activations.get(name)(torch.tensor(X, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, FORMULAS[name](X), rtol=1e-6, atol=1e-9)


def test_names_are_case_insensitive():
    assert activations.get("ReLU") is activations.get("relu")


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown activation 'rleu'; known: .*relu"):
        activations.get("rleu")
