"""Check `export_module`'s arguments for a module of named tensors, so that a mistake is a
one-line `ExportError` before anything runs or is traced."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from training.errors import ExportError

Feeds = dict[str, np.ndarray]
DimLabels = dict[str, dict[int, str]]
"""Per input or output name: axis → label, e.g. `{"input_ids": {0: "batch", 1: "sequence"}}`."""
AxesSpec = Mapping[str, Mapping[int, str] | Sequence[int]]
"""Per input or output name: axis → label (`{1: "sequence"}`), or a list of axes."""
BATCH = "batch"


def sample_feeds(sample_inputs: Any) -> Feeds:
    """The samples as C-ordered arrays, refused unless they are one batch of every input."""
    if not isinstance(sample_inputs, Mapping) or not sample_inputs:
        raise ExportError(
            "sample_inputs must be a dict of input name → array (one batch of every input of "
            f"the module), got {_what(sample_inputs)}; for a module of [rows, features] floats "
            "pass feature_names and rows instead"
        )
    feeds = {str(name): _sample(str(name), value) for name, value in sample_inputs.items()}
    sizes = {name: array.shape[0] for name, array in feeds.items()}
    if len(set(sizes.values())) != 1:
        raise ExportError(
            f"sample_inputs have different batch sizes (first dimensions): {sizes}; every input "
            "needs the same number of examples"
        )
    if next(iter(sizes.values())) < 2:
        raise ExportError(
            "sample_inputs need at least 2 examples: the exporter may fix a batch axis of 1"
        )
    return feeds


def _sample(name: str, value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf" or value.ndim == 0:
        raise ExportError(
            f"sample_inputs[{name!r}] must be an array of numbers or booleans with the batch "
            f"axis first, got {_what(value)}"
        )
    return np.array(value, order="C")  # a copy torch may share and write


def _what(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def shapes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: array.shape for name, array in arrays.items()}


def describe(feeds: Feeds) -> str:
    return ", ".join(f"{name} {a.dtype} {list(a.shape)}" for name, a in feeds.items())


def axes_of(shapes: Mapping[str, tuple[int, ...]], given: AxesSpec | None) -> DimLabels:
    """The exporter's `dynamic_axes`: the batch axis of every tensor, and the axes named."""
    axes = {name: {0: BATCH} for name in shapes}
    for name, named in (given or {}).items():
        if name not in shapes:
            raise ExportError(
                f"dynamic_axes names {name!r}, which is neither an input nor an output; they "
                f"are: {', '.join(map(repr, shapes))}"
            )
        labels = named if isinstance(named, Mapping) else {a: f"{name}_{a}" for a in named}
        for axis, label in labels.items():
            rank = len(shapes[name])
            if not isinstance(axis, int) or not 0 <= axis < rank:
                raise ExportError(
                    f"dynamic_axes[{name!r}]: {axis!r} is not an axis of its shape "
                    f"{list(shapes[name])} (axes 0 to {rank - 1})"
                )
            axes[name][axis] = str(label)
    return axes
