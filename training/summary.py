"""`python -m training <folder> --summary`: Keras's `model.summary()` from the spec alone.

Built from `model:` without reading data or building torch modules, with Keras's layer names,
class names, output shapes (`None` for the batch axis) and parameter counts, so a Keras user can
put it beside the summary of the model they translate.
"""

from __future__ import annotations

from training.layer_specs import Shape
from training.spec import Spec

KERAS_CLASSES = {
    "dense": "Dense",
    "activation": "Activation",
    "dropout": "Dropout",
    "batch_normalization": "BatchNormalization",
    "conv1d": "Conv1D",
    "conv2d": "Conv2D",
    "max_pooling1d": "MaxPooling1D",
    "max_pooling2d": "MaxPooling2D",
    "average_pooling1d": "AveragePooling1D",
    "average_pooling2d": "AveragePooling2D",
    "global_average_pooling1d": "GlobalAveragePooling1D",
    "global_average_pooling2d": "GlobalAveragePooling2D",
    "global_max_pooling1d": "GlobalMaxPooling1D",
    "global_max_pooling2d": "GlobalMaxPooling2D",
    "flatten": "Flatten",
    "reshape": "Reshape",
    "embedding": "Embedding",
    "simple_rnn": "SimpleRNN",
    "lstm": "LSTM",
    "gru": "GRU",
}
"""Keras's class of each layer type (a test keeps it equal to the layer types)."""


def summary(spec: Spec) -> str:
    """The summary's text, as Keras 2 prints it (one row per layer, then the totals)."""
    network = spec.network
    shape = network.input_shape_for(len(spec.data.features))
    cells, total, trainable = [], 0, 0
    frozen = set(network.frozen_layers)
    for name, layer in zip(network.layer_names, network.layers, strict=True):
        count, learned = layer.parameters(shape), layer.trainable_parameters(shape)
        learned = 0 if name in frozen else learned
        shape = layer.output_shape(shape)
        cells.append((f"{name} ({KERAS_CLASSES[layer.type]})", _shape(shape), f"{count:,}"))
        total, trainable = total + count, trainable + learned
    first = max(34, *(len(cell[0]) + 2 for cell in cells))
    width = first + 26 + 12
    rows = [
        f" {a:<{first}}{b:<26}{c}"
        for a, b, c in [("Layer (type)", "Output Shape", "Param #"), *cells]
    ]
    return "\n".join(
        [
            f'Model: "{spec.name}"',
            "_" * width,
            rows[0],
            "=" * width,
            *rows[1:],
            "=" * width,
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
            "_" * width,
        ]
    )


def _shape(shape: Shape) -> str:
    return f"({', '.join(['None', *map(str, shape)])})"
