"""Build a PyTorch network from the spec's `model.layers`, layer for layer as Keras would.

Layers get Keras's names (`dense`, `dense_1`, `conv2d`, ...) unless the spec names them; those
names become the names of the hidden-layer outputs in the exported graph, so a Spark job can
ask for `dense_1` (or a `flatten` of image features) as features.

Tensors stay channels last between layers, as in Keras: a convolution or pooling layer moves
the channels to torch's place and back around its own operation, so that `flatten`, `reshape`,
`dense` and the hidden outputs see exactly Keras's layout. Initializers are Keras's defaults:
glorot_uniform kernels, orthogonal recurrent kernels, zero biases (the LSTM's forget gate at
1), uniform(-0.05, 0.05) embeddings. Keras's SimpleRNN and LSTM have one bias where torch has
two: torch's recurrent bias is kept at zero and frozen, so the counts and the maths are Keras's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training import layer_specs as L
from training.activations import ActivationLayer
from training.spec import NetworkSpec


class Dense(nn.Module):
    """Keras's Dense: `activation(x @ W + b)` on the last axis, glorot_uniform kernel."""

    def __init__(self, in_features: int, spec: L.DenseSpec):
        super().__init__()
        self.linear = nn.Linear(in_features, spec.units, bias=spec.use_bias)
        nn.init.xavier_uniform_(self.linear.weight)  # = Keras's glorot_uniform
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.activation = ActivationLayer(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.activation(self.linear(x))
        return result


class BatchNormalization(nn.BatchNorm1d):
    """Keras's BatchNormalization: statistics per channel (the last axis), over the rest."""

    def __init__(self, width: int, spec: L.BatchNormalizationSpec):
        # Keras's momentum weighs the old running value; torch's weighs the new batch.
        super().__init__(width, eps=spec.epsilon, momentum=1.0 - spec.momentum)
        self.bias.requires_grad_(spec.center)
        self.weight.requires_grad_(spec.scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _same_padding(size: int, window: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's `same`: the output has ceil(size / stride) steps; the odd pad goes last."""
    total = max((math.ceil(size / stride) - 1) * stride + (window - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(
    spatial: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: str,
) -> list[int]:
    """`F.pad`'s argument (last axis first) for Keras's padding of a channels-first tensor."""
    if padding == "valid":
        return []
    if padding == "causal":
        return [dilation[0] * (window[0] - 1), 0]
    pairs = [
        _same_padding(n, k, s, d)
        for n, k, s, d in zip(spatial, window, stride, dilation, strict=True)
    ]
    flat = [p for pair in reversed(pairs) for p in pair]
    return flat if any(flat) else []


class Conv(nn.Module):
    """Keras's Conv1D/Conv2D on a channels-last tensor."""

    def __init__(self, shape: L.Shape, spec: L.Conv1DSpec | L.Conv2DSpec):
        super().__init__()
        kind = nn.Conv1d if spec.rank == 1 else nn.Conv2d
        pads = _pads(shape[:-1], spec.kernel, spec.stride, spec.dilation, spec.padding)
        # Even padding (an odd kernel at stride 1, Keras's usual `same`) is the convolution's own:
        # one Conv node instead of a Pad and a Conv, and no padded copy of the input.
        before, after = pads[0::2], pads[1::2]  # F.pad's order: last axis first
        inner = tuple(reversed(before)) if pads and before == after else 0
        self.pads = [] if inner else pads
        windows: dict[str, Any] = {"stride": spec.stride, "dilation": spec.dilation}
        windows.update(padding=inner, bias=spec.use_bias)
        self.conv = kind(shape[-1], spec.filters, spec.kernel, **windows)  # type: ignore[arg-type]
        nn.init.xavier_uniform_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.activation = ActivationLayer(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x.movedim(-1, 1)
        if self.pads:
            x = F.pad(x, self.pads)
        result: Tensor = self.activation(self.conv(x).movedim(1, -1))
        return result


class Pool(nn.Module):
    """Keras's MaxPooling and AveragePooling (1D, 2D) on a channels-last tensor. With
    `padding: same`, the padding never wins a max and is left out of an average, as in Keras."""

    def __init__(self, shape: L.Shape, spec: L.PoolSpec, kind: str):
        super().__init__()
        self.kind, self.rank = kind, spec.rank
        self.window, self.stride = spec.window, spec.stride
        ones = (1,) * spec.rank
        self.pads = _pads(shape[:-1], spec.window, spec.stride, ones, spec.padding)

    def forward(self, x: Tensor) -> Tensor:
        x = x.movedim(-1, 1)
        pool: Callable[..., Tensor] = POOLS[(self.kind, self.rank)]
        if not self.pads:
            return pool(x, self.window, self.stride).movedim(1, -1)
        if self.kind == "max":
            return pool(F.pad(x, self.pads, value=-math.inf), self.window, self.stride).movedim(
                1, -1
            )
        sums = pool(F.pad(x, self.pads), self.window, self.stride)
        counts = pool(F.pad(torch.ones_like(x[:1, :1]), self.pads), self.window, self.stride)
        return (sums / counts).movedim(1, -1)


POOLS: dict[tuple[str, int], Callable[..., Tensor]] = {
    ("max", 1): F.max_pool1d,
    ("max", 2): F.max_pool2d,
    ("average", 1): F.avg_pool1d,
    ("average", 2): F.avg_pool2d,
}


class GlobalPool(nn.Module):
    def __init__(self, rank: int, kind: str):
        super().__init__()
        self.axes = tuple(range(1, rank + 1))
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=self.axes)
        return torch.mean(x, dim=self.axes)


class Reshape(nn.Module):
    """Keras's Reshape and Flatten: the batch axis kept, the rest laid out anew."""

    def __init__(self, target: L.Shape):
        super().__init__()
        self.target = tuple(target)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.target)

    def extra_repr(self) -> str:
        return str(self.target)


class Embedding(nn.Module):
    """Keras's Embedding: ids arrive as float32 features and are truncated to integers."""

    def __init__(self, spec: L.EmbeddingSpec):
        super().__init__()
        self.embedding = nn.Embedding(spec.input_dim, spec.output_dim)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.embedding(x.long())
        return result


class Recurrent(nn.Module):
    """Keras's SimpleRNN, LSTM and GRU (reset_after) over `(batch, steps, features)`."""

    def __init__(self, width: int, spec: L.SimpleRNNSpec | L.LSTMSpec | L.GRUSpec):
        super().__init__()
        self.return_sequences = spec.return_sequences
        if isinstance(spec, L.SimpleRNNSpec):
            self.rnn: nn.RNNBase = nn.RNN(
                width,
                spec.units,
                nonlinearity=spec.activation,
                bias=spec.use_bias,
                batch_first=True,
            )
        elif isinstance(spec, L.LSTMSpec):
            self.rnn = nn.LSTM(width, spec.units, bias=spec.use_bias, batch_first=True)
        else:
            self.rnn = nn.GRU(width, spec.units, bias=spec.use_bias, batch_first=True)
        weights = dict(self.rnn.named_parameters())
        nn.init.xavier_uniform_(weights["weight_ih_l0"])
        nn.init.orthogonal_(weights["weight_hh_l0"])
        if spec.use_bias:
            nn.init.zeros_(weights["bias_ih_l0"])
            nn.init.zeros_(weights["bias_hh_l0"])
            if isinstance(spec, L.LSTMSpec) and spec.unit_forget_bias:
                with torch.no_grad():  # torch's gates are i, f, g, o: the forget gate is second
                    weights["bias_ih_l0"][spec.units : 2 * spec.units] = 1.0
            if not isinstance(spec, L.GRUSpec):  # Keras has one bias: torch's second stays 0
                weights["bias_hh_l0"].requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return out if self.return_sequences else out[:, -1]  # type: ignore[no-any-return]


Builder = Callable[[Any, L.Shape, L.Shape], nn.Module]
"""A layer's module from its spec and its input and output shapes (one row)."""

BUILDERS: dict[type, Builder] = {
    L.DenseSpec: lambda spec, shape, out: Dense(shape[-1], spec),
    L.ActivationSpec: lambda spec, shape, out: ActivationLayer(spec.activation),
    L.DropoutSpec: lambda spec, shape, out: nn.Dropout(spec.rate),
    L.BatchNormalizationSpec: lambda spec, shape, out: BatchNormalization(shape[-1], spec),
    L.Conv1DSpec: lambda spec, shape, out: Conv(shape, spec),
    L.Conv2DSpec: lambda spec, shape, out: Conv(shape, spec),
    L.MaxPooling1DSpec: lambda spec, shape, out: Pool(shape, spec, "max"),
    L.MaxPooling2DSpec: lambda spec, shape, out: Pool(shape, spec, "max"),
    L.AveragePooling1DSpec: lambda spec, shape, out: Pool(shape, spec, "average"),
    L.AveragePooling2DSpec: lambda spec, shape, out: Pool(shape, spec, "average"),
    L.GlobalMaxPooling1DSpec: lambda spec, shape, out: GlobalPool(1, "max"),
    L.GlobalMaxPooling2DSpec: lambda spec, shape, out: GlobalPool(2, "max"),
    L.GlobalAveragePooling1DSpec: lambda spec, shape, out: GlobalPool(1, "average"),
    L.GlobalAveragePooling2DSpec: lambda spec, shape, out: GlobalPool(2, "average"),
    L.FlattenSpec: lambda spec, shape, out: Reshape(out),
    L.ReshapeSpec: lambda spec, shape, out: Reshape(out),
    L.EmbeddingSpec: lambda spec, shape, out: Embedding(spec),
    L.SimpleRNNSpec: lambda spec, shape, out: Recurrent(shape[-1], spec),
    L.LSTMSpec: lambda spec, shape, out: Recurrent(shape[-1], spec),
    L.GRUSpec: lambda spec, shape, out: Recurrent(shape[-1], spec),
}
"""Every layer type of `layer_specs.LAYERS` (a test keeps the two equal)."""


class Sequential(nn.Module):
    """Keras's Sequential: layers applied in order; hidden activations available by name.

    It takes the flat rows the data and the scaler work on (`in_features` values each) and
    lays them out as the spec's `input_shape` first. Every layer but the last and the dropouts
    is a hidden output (`hidden_names`): dropout is the identity at inference, and the last
    layer is the model's own output.
    """

    def __init__(self, spec: NetworkSpec, in_features: int):
        super().__init__()
        self.input_shape = spec.input_shape_for(in_features)
        shapes = spec.shapes(in_features)
        self.blocks = nn.ModuleDict()
        shape = self.input_shape
        for name, layer, out in zip(spec.layer_names, spec.layers, shapes, strict=True):
            self.blocks[name] = BUILDERS[type(layer)](layer, shape, out)
            shape = out
        self.out_features = shapes[-1][0]
        self.hidden_names = [
            name
            for name, layer in zip(spec.layer_names[:-1], spec.layers[:-1], strict=True)
            if not isinstance(layer, L.DropoutSpec)
        ]
        by_name = dict(zip(spec.layer_names, shapes, strict=True))
        self.hidden_shapes = {name: by_name[name] for name in self.hidden_names}
        self.frozen: set[str] = set()
        """Blocks that do not learn (a base model's, `trainable: false`)."""

    def freeze(self, names: set[str]) -> None:
        """Keras's `trainable = False`: no weight changes, and batch normalization keeps its
        moving statistics and uses them, in training as in inference."""
        self.frozen = set(names)
        for name in names:
            self.blocks[name].requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Sequential:
        super().train(mode)
        for name in self.frozen:
            self.blocks[name].eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_hidden(x, keep=False)[0]

    def forward_with_hidden(self, x: Tensor, keep: bool = True) -> tuple[Tensor, list[Tensor]]:
        """The output and the activations of `hidden_names`, in that order."""
        if len(self.input_shape) > 1:
            x = x.reshape(x.shape[0], *self.input_shape)
        hidden = []
        for name, block in self.blocks.items():
            x = block(x)
            if keep and name in self.hidden_names:
                hidden.append(x)
        return x, hidden
