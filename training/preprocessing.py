"""Feature scaling fitted on the training split and baked into the ONNX graph as its first step.

Because the scaler is part of the graph, every runtime (HTTP, Spark, any ONNX runtime) takes raw
features and nobody can apply the scaling twice or forget it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from inference.metadata import Preprocessing

ScaleKind = Literal["minmax", "standard", "none"]


class Scaler(nn.Module):
    """`(x - offset) * scale` per feature; `none` adds no operation to the graph."""

    offset: Tensor
    scale: Tensor

    def __init__(self, kind: ScaleKind, offset: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.kind = kind
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    @classmethod
    def fit(cls, kind: ScaleKind, features: np.ndarray) -> Scaler:
        """Fit on training rows: minmax maps each feature to [0, 1], standard to mean 0, std 1.

        A constant feature keeps a scale of 1 rather than dividing by zero.
        """
        x = np.asarray(features, dtype=np.float64)
        n = x.shape[1]
        if kind == "minmax":
            offset, spread = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
        elif kind == "standard":
            offset, spread = x.mean(axis=0), x.std(axis=0)
        else:
            return cls("none", np.zeros(n), np.ones(n))
        scale = np.divide(1.0, spread, out=np.ones(n), where=spread > 0)
        return cls(kind, offset, scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "none":
            return x
        return (x - self.offset) * self.scale

    def to_metadata(self) -> Preprocessing:
        if self.kind == "none":
            return Preprocessing(kind="none")
        return Preprocessing(
            kind=self.kind, offset=self.offset.tolist(), scale=self.scale.tolist(), in_graph=True
        )

    def extra_repr(self) -> str:
        return self.kind
