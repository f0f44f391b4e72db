"""A loaded bundle: its metadata and a verified onnxruntime session, ready to predict.

This is the one runtime interface that the HTTP service and the Spark job share, so their
answers cannot drift: `load()` once, then `predict()` batches: named tensors of any rank and
datatype (`{"input_ids": ids, "attention_mask": mask}`), one array for a model of one input,
or a tabular model's rows, records and named columns.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference import inputs
from inference.bundle import describe, onnx_path, read_overlay, resolve_bundle_dir, verify_checksum
from inference.errors import InvalidInputError
from inference.inputs import NUMPY_TYPES
from inference.metadata import BundleMetadata, InputInfo, OutputRole
from inference.runtime import RuntimeOptions, build_session

log = logging.getLogger(__name__)
_ORT_ERRORS = getattr(ort.capi, "onnxruntime_pybind11_state", None)
RUN_REFUSED: tuple[type[Exception], ...] = tuple(
    getattr(_ORT_ERRORS, name, RuntimeError) for name in ("InvalidArgument", "Fail")
)
"""What onnxruntime raises when a graph refuses the values it was given (a token id past its
embedding table, a mask whose length does not broadcast with the ids, sizes its reshape cannot
take): the sender's error, not the server's. The feeds have passed the signature's checks by
then, so what is left is a clash between values or dynamic sizes that only the graph knows."""
Feeds = dict[str, np.ndarray]
PROBE_VALUES = 1 << 18
"""The warm-up's largest batch holds at most this many values per input (256 rows of a small
table, a few images): enough to measure the cost per row, cheap at load."""


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
        return [classes[int(i)] for i in self.class_index.reshape(-1).tolist()]

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
        self.tabular = metadata.tabular
        """The input of a tabular model (rows of named features); None for any other."""
        self._check = inputs.Checker(metadata.inputs)
        self._batched = next((i.name for i in metadata.inputs if i.batch_axis), None)
        self.latency: Latency | None = None
        """Measured by `warm_up`; None before."""
        self._default_outputs = metadata.default_outputs
        self._known_outputs = [o.name for o in metadata.outputs]
        self._session_run = _direct_run(session)
        self._run_options = ort.RunOptions()
        """One for every run (only read by onnxruntime): given None, it makes one per run,
        a tenth of a small model's run. Setting anything on it (`terminate`, config entries)
        would reach every run of this model in flight."""
        self._run_options.log_severity_level = 4
        """A failed run is raised to the caller, who reports it; onnxruntime would also print
        it to stderr, a line per bad request."""

    @classmethod
    def load(
        cls, path: str | Path, version: int | None = None, options: RuntimeOptions | None = None
    ) -> Model:
        """Load a model folder (latest version, or `version`) or a version folder, verified."""
        bundle_dir = resolve_bundle_dir(path, version)
        overlay = read_overlay(bundle_dir)
        onnx_file = onnx_path(bundle_dir, overlay)
        sha256 = verify_checksum(onnx_file, overlay)
        session = build_session(onnx_file, options or RuntimeOptions())
        return cls(bundle_dir, describe(bundle_dir, session, overlay, onnx_file, sha256), session)

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

    def predict(self, data: Any, outputs: Sequence[str] | None = None) -> Prediction:
        """Predict from named tensors (a mapping of input name → array of any rank), or, for a
        model of one input, from that input's array (a tabular model's rows of raw features,
        in the signature's feature order)."""
        return self.run(self.feeds(data), outputs)

    def feeds(self, data: Any) -> Feeds:
        """What `predict` takes, as the checked arrays the graph runs on."""
        if isinstance(data, Mapping):
            return self._check(data)
        if self.tabular is not None:
            return {self.tabular.name: inputs.as_feature_matrix(data, self.tabular)}
        if len(self.metadata.inputs) == 1:
            return self._check({self.metadata.inputs[0].name: data})
        raise InvalidInputError(
            f"this model has {len(self.metadata.inputs)} inputs: pass a dict of input name → "
            f"array ({', '.join(repr(i.name) for i in self.metadata.inputs)})"
        )

    def predict_columns(
        self, columns: Mapping[str, Any], outputs: Sequence[str] | None = None
    ) -> Prediction:
        """Predict from named feature columns, e.g. `{"age": [70, 20]}` (tabular models)."""
        tabular = self._tabular()
        return self.run({tabular.name: inputs.from_columns(columns, tabular)}, outputs)

    def predict_records(
        self, records: Sequence[Mapping[str, Any]], outputs: Sequence[str] | None = None
    ) -> Prediction:
        """Predict from one mapping per row, e.g. `[{"age": 70}, {"age": 20}]` (tabular)."""
        tabular = self._tabular()
        return self.run({tabular.name: inputs.from_records(records, tabular)}, outputs)

    def _tabular(self) -> InputInfo:
        if self.tabular is None:
            raise InvalidInputError(
                "this model has no feature names: pass its inputs as arrays to predict() (add "
                "feature names with 'python -m inference init' for a [rows, features] input)"
            )
        return self.tabular

    def check(self, feeds: Mapping[str, Any]) -> Feeds:
        """Named arrays checked against the signature (what every front end maps its format
        to): the very arrays when they fit, converted where lossless, refused otherwise."""
        return self._check(feeds)

    def rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        """The batch size of checked feeds (1 for a model with no batch axis)."""
        batched = self._batched
        return 1 if batched is None else int(feeds[batched].shape[0])

    def run(
        self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None
    ) -> Prediction:
        """Run already checked feeds (or the one input's checked array); `outputs` defaults to
        all but hidden-layer ones."""
        if isinstance(feeds, np.ndarray):
            feeds = {self.metadata.inputs[0].name: feeds}
        return Prediction(self.outputs(feeds, outputs), self.metadata)

    def outputs(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """`run`'s outputs by name, without the `Prediction` around them (the service's path,
        where a small model's whole run costs ~20 µs)."""
        names = self._default_outputs if outputs is None else self._checked(outputs)
        try:
            values = self._session_run(names, feeds, self._run_options)
        except RUN_REFUSED as e:
            raise InvalidInputError(f"the model cannot run on this input: {_reason(e)}") from e
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

    def warm_up(self, probe_rows: int = 256) -> Latency | None:
        """Run dummy batches (zeros) so the first real request pays no lazy initialisation, and
        measure the session's cost (fixed and per row) so callers can decide where to run a
        batch. A graph that refuses zeros (say, token ids it looks up past a table) is left
        unmeasured (None): its runs then never go on the event loop."""
        per_row = max(
            math.prod(d if d > 0 else 1 for d in i.shape[1:]) for i in self.metadata.inputs
        )
        probe_rows = max(2, min(probe_rows, PROBE_VALUES // per_row))
        if not self.metadata.batchable:
            probe_rows = 1

        def median_seconds(rows: int, repeats: int) -> float:
            batch = {i.name: _zeros(i, rows) for i in self.metadata.inputs}
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.session.run(None, batch)
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]

        try:
            median_seconds(1, 3)  # first runs allocate; not measured
            one = median_seconds(1, 7)
            many = median_seconds(probe_rows, 3) if probe_rows > 1 else one
        except Exception as e:  # onnxruntime's untyped errors: the graph refused the zeros
            log.info("%s: warm-up with zeros failed (%s); its cost is not measured", self.path, e)
            return None
        self.latency = Latency(
            fixed_s=one,
            per_row_s=max(0.0, (many - one) / (probe_rows - 1)) if probe_rows > 1 else 0.0,
            probe_rows=probe_rows,
            probe_s=many,
        )
        return self.latency


def _zeros(info: InputInfo, rows: int) -> np.ndarray:
    """A batch of `rows` zeros (empty strings) for an input, its other dynamic sizes 1."""
    shape = [rows if axis == 0 and d == -1 else max(d, 1) for axis, d in enumerate(info.shape)]
    if info.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, NUMPY_TYPES[info.datatype])


def _direct_run(session: ort.InferenceSession) -> Any:
    """The session's C++ `run(names, feed, run_options)`. onnxruntime's Python wrapper checks
    the feed's names against the graph on every call, reading each input's name and type
    through pybind: that costs a sixth of a small model's run, and our inputs are checked
    against the signature before every run (`Model.check`). The wrapper also retries on the CPU
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


def _reason(error: Exception) -> str:
    """onnxruntime's reason, without the source file and the assertion that precede it
    ("/onnxruntime_src/...h:583 void ...Append(...) axis == 1 || ... was false. Attempting to
    broadcast ..." → "Attempting to broadcast ... (node '/Mul', a Mul)")."""
    text = str(error)
    node = re.search(r"while running (\w+) node\. Name:'([^']*)'", text)
    reason = text.rsplit("Status Message: ", 1)[-1].strip()
    if reason.startswith("/") and " was false. " in reason:
        reason = reason.split(" was false. ", 1)[1]
    return f"{reason} (node {node.group(2)!r}, a {node.group(1)})" if node else reason
