"""Feature scaling fitted on the training split and baked into the ONNX graph as its first step.

Because the scaler is part of the graph, every runtime (HTTP, Spark, any ONNX runtime) takes raw
features and nobody can apply the scaling twice or forget it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from inference.metadata import Preprocessing

ScaleKind = Literal["minmax", "standard", "none"]


@dataclass(frozen=True)
class FeatureStats:
    """Per feature: the count, range, mean and sum of squared deviations of some rows. The
    statistics of parts combine into those of the whole (Chan et al.'s pairwise update), so
    ranks that each read a share of the data fit the scaler that all of it would give."""

    rows: int
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        x = np.asarray(features, dtype=np.float64)
        if len(x) == 0:
            inf = np.full(x.shape[1], np.inf)
            return cls(0, inf, -inf, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
        mean = x.mean(axis=0)
        return cls(len(x), x.min(axis=0), x.max(axis=0), mean, ((x - mean) ** 2).sum(axis=0))

    def __add__(self, other: FeatureStats) -> FeatureStats:
        rows = self.rows + other.rows
        if not self.rows or not other.rows:
            return self if other.rows == 0 else other
        delta = other.mean - self.mean
        return FeatureStats(
            rows,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
            self.mean + delta * (other.rows / rows),
            self.m2 + other.m2 + delta**2 * (self.rows * other.rows / rows),
        )

    @property
    def std(self) -> np.ndarray:
        """The population standard deviation (numpy's `std`, Keras's `Normalization`)."""
        result: np.ndarray = np.sqrt(self.m2 / self.rows)
        return result


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
        return cls.from_stats(kind, FeatureStats.of(features))

    @classmethod
    def from_stats(cls, kind: ScaleKind, stats: FeatureStats) -> Scaler:
        """`fit` from the statistics of the training rows."""
        n = len(stats.mean)
        if kind == "minmax":
            offset, spread = stats.low, stats.high - stats.low
        elif kind == "standard":
            offset, spread = stats.mean, stats.std
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
