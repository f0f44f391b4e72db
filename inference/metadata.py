"""The bundle's self-description (`metadata.json`), as a validated pydantic model.

Training writes it with these classes and every reader (in-process, HTTP, Spark) loads it with
them, so the contract has exactly one definition. Tensor datatypes use the Open Inference
Protocol's names (FP32, INT64, ...) because that is what the HTTP service reports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"

Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64"]
OutputRole = Literal["scores", "class_index", "predictions", "layer"]
"""What an output means: class scores, the predicted class index, regression values, or a
hidden layer's activations (for featurization; not returned unless asked for)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorInfo(_Strict):
    """One graph input or output; shape uses -1 for the batch axis."""

    name: str
    datatype: Datatype
    shape: list[int]
    description: str = ""


class InputInfo(TensorInfo):
    feature_names: list[str] = Field(min_length=1)
    accepts_non_finite: bool = False
    """NaN and infinity are refused unless the graph was built to handle them."""

    @model_validator(mode="after")
    def _features_fit_shape(self) -> InputInfo:
        if len(self.shape) != 2 or self.shape[1] != len(self.feature_names):
            raise ValueError(
                f"input shape {self.shape} does not fit {len(self.feature_names)} feature names; "
                f"expected [-1, {len(self.feature_names)}]"
            )
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"feature names are not unique: {self.feature_names}")
        return self


class OutputInfo(TensorInfo):
    role: OutputRole


class Preprocessing(_Strict):
    """The scaling baked into the graph as its first step: `(x - offset) * scale`.

    Recorded so that nobody applies it a second time outside the graph.
    """

    kind: Literal["minmax", "standard", "none"] = "none"
    offset: list[float] = []
    scale: list[float] = []
    in_graph: bool = True


class OnnxInfo(_Strict):
    file: str = ONNX_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
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


class BundleMetadata(_Strict):
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: int = Field(ge=1)
    description: str = ""
    task: Literal["classification", "regression"]
    inputs: list[InputInfo] = Field(min_length=1, max_length=1)
    outputs: list[OutputInfo] = Field(min_length=1)
    classes: list[str] | None = None
    decision_threshold: float | None = None
    """For a single-unit classifier: scores above this are class 1."""
    preprocessing: Preprocessing = Preprocessing()
    metrics: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    onnx: OnnxInfo
    provenance: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> BundleMetadata:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names are not unique: {names}")
        if self.task == "classification":
            if not self.classes:
                raise ValueError("a classification bundle needs its class labels ('classes')")
            roles = {o.role for o in self.outputs}
            if not {"scores", "class_index"} <= roles:
                raise ValueError("a classification bundle needs 'scores' and 'class_index' outputs")
        return self

    @property
    def input(self) -> InputInfo:
        return self.inputs[0]

    @property
    def feature_names(self) -> list[str]:
        return self.input.feature_names

    @property
    def default_outputs(self) -> list[str]:
        """Outputs returned when none are named: everything but hidden-layer activations."""
        return [o.name for o in self.outputs if o.role != "layer"]

    def output(self, role: OutputRole) -> OutputInfo | None:
        return next((o for o in self.outputs if o.role == role), None)
