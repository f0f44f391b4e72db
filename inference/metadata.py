"""A bundle's self-description, as a validated pydantic model.

A bare `model.onnx` is a model: its inputs and outputs come from the graph itself
(`inference.bundle.describe`). `metadata.json` is an optional overlay on that: feature names,
class labels, the role of each output, provenance, the sha256 of the graph. Our trainer writes it
whole; a user may write only the keys they need (`python -m inference init` writes it for them),
and a tensor entry may leave out `datatype` and `shape`, which the graph supplies. Every reader
(in-process, HTTP, Spark) sees the merged `BundleMetadata`, so the contract has exactly one
definition. Tensor datatypes use the Open Inference Protocol's names (FP32, INT64, BYTES, ...)
because that is what the HTTP service reports.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
"""ONNX tensor types in the Open Inference Protocol's names; BYTES is ONNX's `string`."""
OutputRole = Literal["scores", "class_index", "predictions", "layer", "output"]
"""What an output means: class scores, the predicted class index, regression values, a hidden
layer's activations (for featurization; not returned unless asked for), or a plain graph output
(what a bare graph's outputs are)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorInfo(_Strict):
    """One graph input or output; shape uses -1 for every dynamic dimension (the batch axis,
    a sequence length, ...)."""

    name: str
    datatype: Datatype
    shape: list[int]
    description: str = ""


class InputInfo(TensorInfo):
    feature_names: list[str] | None = Field(default=None, min_length=1)
    """The columns of a tabular input `[rows, features]`, in order: they give the model the
    friendly API (rows, records, named columns) and named Spark columns."""
    accepts_non_finite: bool = False
    """NaN and infinity in a float input are refused unless the graph was built for them."""

    @model_validator(mode="after")
    def _features_fit_shape(self) -> InputInfo:
        names = self.feature_names
        if names is None:
            return self
        if len(self.shape) != 2 or self.shape[1] not in (-1, len(names)):
            raise ValueError(
                f"input {self.name!r} of shape {self.shape} does not fit {len(names)} feature "
                f"names; feature names need a [-1, {len(names)}] input"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"feature names are not unique: {names}")
        return self

    @property
    def batch_axis(self) -> bool:
        """Whether the first dimension is dynamic: the axis along which rows are batched."""
        return bool(self.shape) and self.shape[0] == -1


class OutputInfo(TensorInfo):
    role: OutputRole = "output"


class Preprocessing(_Strict):
    """The scaling baked into the graph as its first step: `(x - offset) * scale`.

    Recorded so that nobody applies it a second time outside the graph.
    """

    kind: Literal["minmax", "standard", "none"] = "none"
    offset: list[float] = []
    scale: list[float] = []
    in_graph: bool = True


class OnnxInfo(_Strict):
    file: str = Field(default=ONNX_FILE, pattern=r"^[^/\\]+\.onnx$")
    """A file in the version folder itself: a path elsewhere is refused."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Checked at load when the overlay records it; computed at load otherwise."""
    opset: int | None = None
    producer: str = ""


class Provenance(_Strict):
    """How the bundle was made, so it can always be rebuilt."""

    created_at: datetime
    spec_file: str | None = None
    spec_sha256: str | None = None
    spec: dict[str, Any] | None = None
    source: str = "spec"
    versions: dict[str, str] = {}
    rows: dict[str, int] = {}
    epochs_run: int | None = None
    duration_s: float | None = None
    parity_max_abs_diff: float | None = None
    distributed: dict[str, Any] | None = None
    """Data-parallel training: processes, backend, batch sizes."""
    search: dict[str, Any] | None = None
    """Hyperparameter search: the winning trial's params, the method, metric and leaderboard."""
    base: dict[str, Any] | None = None
    """Transfer learning: the base model's name, version and sha256, where it was cut, whether
    its layers were trained further."""


class BundleMetadata(_Strict):
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: int = Field(ge=1)
    description: str = ""
    task: Literal["classification", "regression"] | None = None
    """None for a graph that says nothing of its task (a bare `model.onnx`)."""
    inputs: list[InputInfo] = Field(min_length=1)
    outputs: list[OutputInfo] = Field(min_length=1)
    classes: list[str] | None = None
    decision_threshold: float | None = None
    """For a single-unit classifier: scores above this are class 1."""
    preprocessing: Preprocessing = Preprocessing()
    metrics: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    onnx: OnnxInfo
    provenance: Provenance | None = None
    """How our trainer made the bundle; None for a graph from elsewhere."""

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names are not unique: {names}")
        roles = [o.role for o in self.outputs]
        for role in ("scores", "class_index", "predictions"):
            if roles.count(role) > 1:
                raise ValueError(f"more than one output has the role {role!r}")
        if self.task == "classification":
            if not self.classes:
                raise ValueError("a classification bundle needs its class labels ('classes')")
            if not {"scores", "class_index"} <= set(roles):
                raise ValueError("a classification bundle needs 'scores' and 'class_index' outputs")
        return self

    @property
    def tabular(self) -> InputInfo | None:
        """The input of a tabular model (one `[rows, features]` input with feature names), the
        case that also takes rows, records and named columns; None for any other model."""
        if len(self.inputs) == 1 and self.inputs[0].feature_names is not None:
            return self.inputs[0]
        return None

    @property
    def feature_names(self) -> list[str]:
        """A tabular model's feature names; empty for any other model."""
        tabular = self.tabular
        return list(tabular.feature_names or []) if tabular is not None else []

    @property
    def batchable(self) -> bool:
        """Whether requests can be merged along the first axis: every input and output has a
        dynamic first dimension (Triton's rule for `max_batch_size > 0`)."""
        tensors = [*self.inputs, *self.outputs]
        return all(t.shape and t.shape[0] == -1 for t in tensors)

    @property
    def default_outputs(self) -> list[str]:
        """Outputs returned when none are named: everything but hidden-layer activations."""
        return [o.name for o in self.outputs if o.role != "layer"]

    def output(self, role: OutputRole) -> OutputInfo | None:
        return self._roles.get(role)

    @cached_property
    def _roles(self) -> dict[str, OutputInfo]:
        """The first output of each role."""
        return {o.role: o for o in reversed(self.outputs)}

    @cached_property
    def class_outputs(self) -> tuple[str, str, list[str]] | None:
        """A labelled classifier's scores and class index outputs, and its labels (what the
        friendly API turns into answers, on every request); None for any other model."""
        scores, index = self.output("scores"), self.output("class_index")
        if self.task == "classification" and self.classes and scores and index:
            return scores.name, index.name, self.classes
        return None
