"""The layers of `model.layers`, in Keras's vocabulary: arguments, defaults, output shapes and
parameter counts, without torch.

Shapes are Keras's, channels last and without the batch axis: an 8x8 grayscale image is
`(8, 8, 1)`, a sequence of 20 steps of 3 values `(20, 3)`, a sequence of 20 token ids `(20,)`.
Each layer says what it makes of its input shape (`output_shape`) and how many weights it holds
(`parameters`, Keras's count), so that `--summary` prints Keras's `model.summary()` and a wrong
stack (a conv2d on a vector, a dense head on a sequence) is refused before anything is built.
`training.network` builds the torch modules from the same classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from training import vocabulary
from training.sections import Section

Shape = tuple[int, ...]


class LayerError(ValueError):
    """A layer cannot take the shape it is given; the message says what it needs."""


def _activation(value: str) -> str:
    vocabulary.check_activation(value)
    return value.lower()


class _Layer(Section):
    type: str
    """Each layer's Literal tag (the key of the discriminated union)."""
    name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    input_shape: list[Annotated[int, Field(gt=0)]] | None = None

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def parameters(self, shape: Shape) -> int:
        return 0

    def trainable_parameters(self, shape: Shape) -> int:
        return self.parameters(shape)


# --- dense, activation, dropout, batch normalization --------------------------------------


class DenseSpec(_Layer):
    """Keras's Dense, on the last axis (a sequence of vectors stays a sequence)."""

    type: Literal["dense"]
    units: int = Field(gt=0)
    activation: Annotated[str, Field(validate_default=True)] = "linear"
    use_bias: bool = True
    kernel_initializer: Literal["glorot_uniform"] = "glorot_uniform"
    bias_initializer: Literal["zeros"] = "zeros"

    _check_activation = field_validator("activation")(_activation)

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape[:-1], self.units)

    def parameters(self, shape: Shape) -> int:
        return shape[-1] * self.units + (self.units if self.use_bias else 0)


class ActivationSpec(_Layer):
    type: Literal["activation"]
    activation: str

    _check_activation = field_validator("activation")(_activation)


class DropoutSpec(_Layer):
    type: Literal["dropout"]
    rate: float = Field(ge=0.0, lt=1.0)


class BatchNormalizationSpec(_Layer):
    """Keras's BatchNormalization on the last axis (the channels of an image)."""

    type: Literal["batch_normalization"]
    momentum: float = Field(default=0.99, gt=0.0, lt=1.0)
    epsilon: float = Field(default=1e-3, gt=0.0)
    center: bool = True
    scale: bool = True

    def parameters(self, shape: Shape) -> int:
        return (2 + self.center + self.scale) * shape[-1]  # the moving mean and variance too

    def trainable_parameters(self, shape: Shape) -> int:
        return (self.center + self.scale) * shape[-1]


# --- convolution and pooling --------------------------------------------------------------


def _window(value: int | list[int], rank: int, what: str) -> tuple[int, ...]:
    """Keras's `int or tuple`: one size for every spatial axis, or one per axis."""
    sizes = [value] * rank if isinstance(value, int) else list(value)
    if len(sizes) != rank or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{what} must be a positive integer or a list of {rank}, got {value!r}")
    return tuple(sizes)


def _spatial(shape: Shape, rank: int, kind: str) -> None:
    if len(shape) != rank + 1:
        wanted = "(steps, channels)" if rank == 1 else "(height, width, channels)"
        raise LayerError(
            f"{kind} takes {wanted} per row, got {shape}; set model.input_shape "
            f"(e.g. {[8, 1] if rank == 1 else [8, 8, 1]}) or add a reshape layer"
        )


def _out_size(size: int, window: int, stride: int, dilation: int, padding: str) -> int:
    if padding in ("same", "causal"):
        return math.ceil(size / stride)
    span = dilation * (window - 1) + 1
    return (size - span) // stride + 1 if size >= span else 0


class _Conv(_Layer):
    filters: int = Field(gt=0)
    kernel_size: int | list[int]
    strides: int | list[int] = 1
    padding: Literal["valid", "same"] = "valid"
    dilation_rate: int | list[int] = 1
    activation: Annotated[str, Field(validate_default=True)] = "linear"
    use_bias: bool = True
    kernel_initializer: Literal["glorot_uniform"] = "glorot_uniform"
    bias_initializer: Literal["zeros"] = "zeros"

    _check_activation = field_validator("activation")(_activation)
    rank: ClassVar[int] = 0

    @model_validator(mode="after")
    def _windows(self) -> _Conv:
        self.kernel, self.stride, self.dilation  # noqa: B018  (checks them)
        if self.padding == "same" and max(self.stride) > 1 and max(self.dilation) > 1:
            raise ValueError("strides and dilation_rate above 1 together are not supported")
        return self

    @property
    def kernel(self) -> tuple[int, ...]:
        return _window(self.kernel_size, self.rank, "kernel_size")

    @property
    def stride(self) -> tuple[int, ...]:
        return _window(self.strides, self.rank, "strides")

    @property
    def dilation(self) -> tuple[int, ...]:
        return _window(self.dilation_rate, self.rank, "dilation_rate")

    def output_shape(self, shape: Shape) -> Shape:
        _spatial(shape, self.rank, self.type)
        sizes = tuple(
            _out_size(n, k, s, d, self.padding)
            for n, k, s, d in zip(shape[:-1], self.kernel, self.stride, self.dilation, strict=True)
        )
        if min(sizes) < 1:
            raise LayerError(
                f"{self.type}: a kernel of {list(self.kernel)} does not fit the input {shape} "
                "with padding 'valid'; use a smaller kernel_size or padding: same"
            )
        return (*sizes, self.filters)

    def parameters(self, shape: Shape) -> int:
        weights = math.prod(self.kernel) * shape[-1] * self.filters
        return weights + (self.filters if self.use_bias else 0)


class Conv1DSpec(_Conv):
    type: Literal["conv1d"]
    padding: Literal["valid", "same", "causal"] = "valid"  # type: ignore[assignment]
    rank: ClassVar[int] = 1


class Conv2DSpec(_Conv):
    type: Literal["conv2d"]
    rank: ClassVar[int] = 2


class PoolSpec(_Layer):
    pool_size: int | list[int] = 2
    strides: int | list[int] | None = None
    """Defaults to pool_size, as in Keras."""
    padding: Literal["valid", "same"] = "valid"
    rank: ClassVar[int] = 0

    @model_validator(mode="after")
    def _windows(self) -> PoolSpec:
        self.window, self.stride  # noqa: B018  (checks them)
        return self

    @property
    def window(self) -> tuple[int, ...]:
        return _window(self.pool_size, self.rank, "pool_size")

    @property
    def stride(self) -> tuple[int, ...]:
        return _window(
            self.strides if self.strides is not None else self.pool_size, self.rank, "strides"
        )

    def output_shape(self, shape: Shape) -> Shape:
        _spatial(shape, self.rank, self.type)
        sizes = tuple(
            _out_size(n, k, s, 1, self.padding)
            for n, k, s in zip(shape[:-1], self.window, self.stride, strict=True)
        )
        if min(sizes) < 1:
            raise LayerError(
                f"{self.type}: a pool of {list(self.window)} does not fit the input {shape}"
            )
        return (*sizes, shape[-1])


class MaxPooling1DSpec(PoolSpec):
    type: Literal["max_pooling1d"]
    rank: ClassVar[int] = 1


class MaxPooling2DSpec(PoolSpec):
    type: Literal["max_pooling2d"]
    rank: ClassVar[int] = 2


class AveragePooling1DSpec(PoolSpec):
    type: Literal["average_pooling1d"]
    rank: ClassVar[int] = 1


class AveragePooling2DSpec(PoolSpec):
    type: Literal["average_pooling2d"]
    rank: ClassVar[int] = 2


class _GlobalPool(_Layer):
    rank: ClassVar[int] = 0

    def output_shape(self, shape: Shape) -> Shape:
        _spatial(shape, self.rank, self.type)
        return (shape[-1],)


class GlobalAveragePooling1DSpec(_GlobalPool):
    type: Literal["global_average_pooling1d"]
    rank: ClassVar[int] = 1


class GlobalAveragePooling2DSpec(_GlobalPool):
    type: Literal["global_average_pooling2d"]
    rank: ClassVar[int] = 2


class GlobalMaxPooling1DSpec(_GlobalPool):
    type: Literal["global_max_pooling1d"]
    rank: ClassVar[int] = 1


class GlobalMaxPooling2DSpec(_GlobalPool):
    type: Literal["global_max_pooling2d"]
    rank: ClassVar[int] = 2


# --- reshaping ----------------------------------------------------------------------------


class FlattenSpec(_Layer):
    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


class ReshapeSpec(_Layer):
    type: Literal["reshape"]
    target_shape: list[int] = Field(min_length=1)
    """At most one -1, inferred from the input's size (as Keras's Reshape)."""

    @field_validator("target_shape")
    @classmethod
    def _target(cls, value: list[int]) -> list[int]:
        if any(n == 0 or n < -1 for n in value) or value.count(-1) > 1:
            raise ValueError(f"sizes must be positive, with at most one -1; got {value}")
        return value

    def output_shape(self, shape: Shape) -> Shape:
        size, known = math.prod(shape), math.prod(n for n in self.target_shape if n != -1)
        target = [size // known if n == -1 else n for n in self.target_shape]
        if math.prod(target) != size:
            raise LayerError(f"reshape: {shape} ({size} values) cannot become {self.target_shape}")
        return tuple(target)


# --- embedding and recurrent layers -------------------------------------------------------


class EmbeddingSpec(_Layer):
    """Keras's Embedding: integer ids in `[0, input_dim)` → vectors of `output_dim`."""

    type: Literal["embedding"]
    input_dim: int = Field(gt=0)
    output_dim: int = Field(gt=0)
    embeddings_initializer: Literal["uniform"] = "uniform"
    """Keras's RandomUniform(-0.05, 0.05)."""

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape, self.output_dim)

    def parameters(self, shape: Shape) -> int:
        return self.input_dim * self.output_dim


class _Recurrent(_Layer):
    units: int = Field(gt=0)
    return_sequences: bool = False
    use_bias: bool = True
    kernel_initializer: Literal["glorot_uniform"] = "glorot_uniform"
    recurrent_initializer: Literal["orthogonal"] = "orthogonal"
    bias_initializer: Literal["zeros"] = "zeros"
    gates: ClassVar[int] = 1

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 2:
            raise LayerError(
                f"{self.type} takes (steps, features) per row, got {shape}; an embedding, a "
                "conv1d or a reshape layer makes one (e.g. input_shape: [20, 1])"
            )
        return (shape[0], self.units) if self.return_sequences else (self.units,)

    def parameters(self, shape: Shape) -> int:
        weights = self.gates * self.units * (shape[-1] + self.units)
        return weights + (self.gates * self.units * self.bias_vectors if self.use_bias else 0)

    @property
    def bias_vectors(self) -> int:
        return 1


class SimpleRNNSpec(_Recurrent):
    type: Literal["simple_rnn"]
    activation: Literal["tanh", "relu"] = "tanh"


class LSTMSpec(_Recurrent):
    type: Literal["lstm"]
    activation: Literal["tanh"] = "tanh"
    recurrent_activation: Literal["sigmoid"] = "sigmoid"
    unit_forget_bias: bool = True
    gates: ClassVar[int] = 4


class GRUSpec(_Recurrent):
    type: Literal["gru"]
    activation: Literal["tanh"] = "tanh"
    recurrent_activation: Literal["sigmoid"] = "sigmoid"
    reset_after: Literal[True] = True
    """Keras's default since 2.0 (and cuDNN's); the older `false` is not offered."""
    gates: ClassVar[int] = 3

    @property
    def bias_vectors(self) -> int:
        return 2  # with reset_after, an input and a recurrent bias (as Keras counts)


LAYERS: tuple[type[_Layer], ...] = (
    DenseSpec,
    ActivationSpec,
    DropoutSpec,
    BatchNormalizationSpec,
    Conv1DSpec,
    Conv2DSpec,
    MaxPooling1DSpec,
    MaxPooling2DSpec,
    AveragePooling1DSpec,
    AveragePooling2DSpec,
    GlobalAveragePooling1DSpec,
    GlobalAveragePooling2DSpec,
    GlobalMaxPooling1DSpec,
    GlobalMaxPooling2DSpec,
    FlattenSpec,
    ReshapeSpec,
    EmbeddingSpec,
    SimpleRNNSpec,
    LSTMSpec,
    GRUSpec,
)

LayerSpec = Annotated[
    DenseSpec
    | ActivationSpec
    | DropoutSpec
    | BatchNormalizationSpec
    | Conv1DSpec
    | Conv2DSpec
    | MaxPooling1DSpec
    | MaxPooling2DSpec
    | AveragePooling1DSpec
    | AveragePooling2DSpec
    | GlobalAveragePooling1DSpec
    | GlobalAveragePooling2DSpec
    | GlobalMaxPooling1DSpec
    | GlobalMaxPooling2DSpec
    | FlattenSpec
    | ReshapeSpec
    | EmbeddingSpec
    | SimpleRNNSpec
    | LSTMSpec
    | GRUSpec,
    Field(discriminator="type"),
]


def shapes(layers: Sequence[_Layer], input_shape: Shape) -> list[Shape]:
    """Each layer's output shape, in order; a LayerError names the first that cannot fit."""
    result, shape = [], input_shape
    for layer in layers:
        shape = layer.output_shape(shape)
        result.append(shape)
    return result
