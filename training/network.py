"""Build a PyTorch network from the spec's `model.layers`, layer for layer as Keras would.

Layers get Keras's names (`dense`, `dense_1`, `activation`, ...) unless the spec names them;
those names become the names of the hidden-layer outputs in the exported graph, so a Spark job
can ask for `dense_1` activations as features.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.activations import ActivationLayer
from training.spec import (
    ActivationSpec,
    BatchNormalizationSpec,
    DenseSpec,
    DropoutSpec,
    LayerSpec,
    NetworkSpec,
)


class Dense(nn.Module):
    """Keras's Dense: `activation(x @ W + b)`, glorot_uniform kernel, zero bias."""

    def __init__(self, in_features: int, spec: DenseSpec):
        super().__init__()
        self.linear = nn.Linear(in_features, spec.units, bias=spec.use_bias)
        nn.init.xavier_uniform_(self.linear.weight)  # = Keras's glorot_uniform
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.activation = ActivationLayer(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.activation(self.linear(x))
        return result


def batch_normalization(width: int, spec: BatchNormalizationSpec) -> nn.BatchNorm1d:
    # Keras's momentum weighs the old running value; torch's weighs the new batch.
    layer = nn.BatchNorm1d(width, eps=spec.epsilon, momentum=1.0 - spec.momentum)
    layer.bias.requires_grad_(spec.center)
    layer.weight.requires_grad_(spec.scale)
    return layer


def build_layer(layer: LayerSpec, width: int) -> nn.Module:
    if isinstance(layer, DenseSpec):
        return Dense(width, layer)
    if isinstance(layer, ActivationSpec):
        return ActivationLayer(layer.activation)
    if isinstance(layer, DropoutSpec):
        return nn.Dropout(layer.rate)
    return batch_normalization(width, layer)


class Sequential(nn.Module):
    """Keras's Sequential: layers applied in order; hidden activations available by name.

    Every layer but the last and the dropouts is a hidden output (`hidden_names`): dropout is
    the identity at inference, and the last layer is the model's own output.
    """

    def __init__(self, spec: NetworkSpec, in_features: int):
        super().__init__()
        self.blocks = nn.ModuleDict()
        width, widths = in_features, {}
        for name, layer in zip(spec.layer_names, spec.layers, strict=True):
            self.blocks[name] = build_layer(layer, width)
            width = layer.units if isinstance(layer, DenseSpec) else width
            widths[name] = width
        self.out_features = width
        self.hidden_names = [
            name
            for name, layer in zip(spec.layer_names[:-1], spec.layers[:-1], strict=True)
            if not isinstance(layer, DropoutSpec)
        ]
        self.hidden_widths = {name: widths[name] for name in self.hidden_names}

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output and the activations of `hidden_names`, in that order."""
        hidden = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in self.hidden_names:
                hidden.append(x)
        return x, hidden
