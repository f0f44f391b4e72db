"""A loaded bundle: its metadata and a verified onnxruntime session, ready to predict.

This is the one runtime interface that the HTTP service and the Spark job share, so their
answers cannot drift: `load()` once, then `predict()` batches of raw features.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference import inputs
from inference.bundle import read_metadata, resolve_bundle_dir, verify_checksum, verify_signature
from inference.errors import InvalidInputError
from inference.metadata import BundleMetadata, OutputRole
from inference.runtime import RuntimeOptions, build_session


@dataclass(frozen=True)
class Latency:
    """A session's measured cost of a batch: `fixed_s + rows * per_row_s` seconds, fitted
    between one row and `probe_rows` rows (which took `probe_s`).

    Past `probe_rows` nothing was measured, and the fit's slope is fragile: for a small model
    `probe_rows` rows cost barely more than one, so one slow one-row run (a busy machine) makes
    the slope ~0 and any batch look free, and the service would run a 50,000-row request on its
    event loop, past the request timeout. So a larger batch is also held to at least the probe's
    cost per row (`probe_s / probe_rows`), a bound that noise can only raise."""

    fixed_s: float
    per_row_s: float
    probe_rows: int
    probe_s: float

    def estimate(self, rows: int) -> float:
        fitted = self.fixed_s + rows * self.per_row_s
        if rows <= self.probe_rows:
            return fitted
        return max(fitted, self.probe_s * rows / self.probe_rows)


@dataclass(frozen=True)
class Prediction:
    """Named outputs for a batch, with the class labels when the model is a classifier."""

    outputs: dict[str, np.ndarray]
    metadata: BundleMetadata = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    @property
    def scores(self) -> np.ndarray:
        return self._by_role("scores")

    @property
    def class_index(self) -> np.ndarray:
        return self._by_role("class_index")

    @property
    def labels(self) -> list[str]:
        """The predicted class label of each row."""
        classes = self.metadata.classes or []
        return [classes[i] for i in self.class_index.tolist()]

    def _by_role(self, role: OutputRole) -> np.ndarray:
        info = self.metadata.output(role)
        if info is None or info.name not in self.outputs:
            raise KeyError(f"this prediction has no {role!r} output; it has {sorted(self.outputs)}")
        return self.outputs[info.name]


class Model:
    """A verified bundle with its session; safe to call from many threads at once."""

    def __init__(self, path: Path, metadata: BundleMetadata, session: ort.InferenceSession):
        self.path = path
        self.metadata = metadata
        self.session = session
        self.input_name = metadata.input.name
        self.latency: Latency | None = None
        """Measured by `warm_up`; None before."""
        self._default_outputs = metadata.default_outputs
        self._known_outputs = [o.name for o in metadata.outputs]
        self._session_run = _direct_run(session)
        self._run_options = ort.RunOptions()
        """One for every run (only read by onnxruntime): given None, it makes one per run,
        a tenth of a small model's run. Setting anything on it (`terminate`, config entries)
        would reach every run of this model in flight."""

    @classmethod
    def load(
        cls, path: str | Path, version: int | None = None, options: RuntimeOptions | None = None
    ) -> Model:
        """Load a model folder (latest version, or `version`) or a version folder, verified."""
        bundle_dir = resolve_bundle_dir(path, version)
        metadata = read_metadata(bundle_dir)
        onnx_file = verify_checksum(bundle_dir, metadata)
        session = build_session(onnx_file, options or RuntimeOptions())
        verify_signature(session, metadata, onnx_file)
        return cls(bundle_dir, metadata, session)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def providers(self) -> list[str]:
        providers: list[str] = self.session.get_providers()
        return providers

    def predict(self, features: Any, outputs: Sequence[str] | None = None) -> Prediction:
        """Predict from a 2-D array-like of raw features, in the signature's feature order."""
        return self.run(inputs.as_feature_matrix(features, self.metadata.input), outputs)

    def predict_columns(
        self, columns: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> Prediction:
        """Predict from named feature columns, e.g. `{"age": [70, 20]}`."""
        return self.run(inputs.from_columns(columns, self.metadata.input), outputs)

    def predict_records(
        self, records: Sequence[Mapping[str, Any]], outputs: Sequence[str] | None = None
    ) -> Prediction:
        """Predict from one mapping per row, e.g. `[{"age": 70}, {"age": 20}]`."""
        return self.run(inputs.from_records(records, self.metadata.input), outputs)

    def run(self, matrix: np.ndarray, outputs: Sequence[str] | None = None) -> Prediction:
        """Run an already validated float32 matrix; `outputs` defaults to the non-layer ones."""
        return Prediction(self.outputs(matrix, outputs), self.metadata)

    def outputs(
        self, matrix: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """`run`'s outputs by name, without the `Prediction` around them (the service's path,
        where a small model's whole run costs ~20 µs)."""
        names = self._default_outputs if outputs is None else self._checked(outputs)
        values = self._session_run(names, {self.input_name: matrix}, self._run_options)
        return dict(zip(names, values, strict=True))

    def _checked(self, outputs: Sequence[str]) -> list[str]:
        names = list(outputs)
        if not names or len(set(names)) != len(names):
            raise InvalidInputError(f"ask for one or more distinct outputs, got {names}")
        unknown = [n for n in names if n not in self._known_outputs]
        if unknown:
            raise InvalidInputError(
                f"unknown output(s) {', '.join(map(repr, unknown))}; this model has: "
                f"{', '.join(self._known_outputs)}"
            )
        return names

    def warm_up(self, probe_rows: int = 256) -> Latency:
        """Run dummy batches so the first real request pays no lazy initialisation, and measure
        the session's cost (fixed and per row) so callers can decide where to run a batch."""
        n_features = len(self.metadata.feature_names)

        def median_seconds(rows: int, repeats: int) -> float:
            batch = {self.input_name: np.zeros((rows, n_features), np.float32)}
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.session.run(None, batch)
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]

        median_seconds(1, 3)  # first runs allocate; not measured
        one, many = median_seconds(1, 7), median_seconds(probe_rows, 3)
        self.latency = Latency(
            fixed_s=one,
            per_row_s=max(0.0, (many - one) / (probe_rows - 1)),
            probe_rows=probe_rows,
            probe_s=many,
        )
        return self.latency


def _direct_run(session: ort.InferenceSession) -> Any:
    """The session's C++ `run(names, feed, run_options)`. onnxruntime's Python wrapper checks
    the feed's names against the graph on every call, reading each input's name and type
    through pybind: that costs a sixth of a small model's run, and our one input is checked
    against the graph once, at load (`verify_signature`). The wrapper also retries on the CPU
    when a GPU provider fails mid-run, swapping `_sess` for a CPU one; `build_session` turns
    that fallback off, so the bound `run` stays the session's own. Where onnxruntime's internals
    differ, the public `run` it is."""
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    if callable(run):
        return run
    return session.run


def load(
    path: str | Path, version: int | None = None, options: RuntimeOptions | None = None
) -> Model:
    """Shorthand for `Model.load`."""
    return Model.load(path, version, options)
