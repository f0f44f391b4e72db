"""Keras 3's activation functions, by name, as PyTorch functions that export to ONNX.

Defaults follow `keras.activations` (not the layer classes): leaky_relu's slope is 0.2, gelu
is exact (not the tanh approximation), hard_sigmoid is Keras 3's `relu6(x + 3) / 6`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.names import lookup

Activation = Callable[[Tensor], Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.2),
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "exponential": torch.exp,
    "hard_sigmoid": lambda x: torch.clamp(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_silu": lambda x: x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0,
    "hard_swish": lambda x: x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0,
}

PROBABILITY_ACTIVATIONS = frozenset({"sigmoid", "softmax", "hard_sigmoid"})
"""Activations whose output can be read as class probabilities."""


def get(name: str) -> Activation:
    """The activation function Keras calls `name`."""
    return lookup("activation", name, ACTIVATIONS)


class ActivationLayer(nn.Module):
    """An activation as a module, so it shows in the network and in the exported graph."""

    def __init__(self, name: str):
        super().__init__()
        self.activation_name = name.lower()
        self.fn = get(name)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.activation_name
