"""The model spec (`model.yaml`), in Keras's vocabulary, parsed and checked before any work.

Every problem is reported as `<file>: <key.path>: <what was expected>`, so a typo in a layer
name reads like `models/x/model.yaml: model.layers.1.activation: unknown activation 'rleu';
known: elu, exponential, ...` instead of a traceback ten seconds into training.

What every section shares (unknown keys refused, errors worded) is in `training.sections`; the
`search:` section, used by `--search` only, is in `training.search_spec`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inference.yaml_files import YamlError, load_yaml
from training import base_model, layer_specs, vocabulary
from training.layer_specs import EmbeddingSpec, LayerError, LayerSpec, Shape
from training.search_spec import SearchSpec
from training.sections import Section, describe

SPEC_FILE = "model.yaml"


class SpecError(Exception):
    """A spec (or the data it names) is wrong; the message says where and what was expected."""


class DataSpec(Section):
    source: str
    """builtin:<name> | csv:<path> | parquet:<path> (relative to the spec file) | spark:<table>."""
    features: list[str] = Field(min_length=1)
    label: str | list[str]
    classes: list[str] | None = Field(default=None, min_length=2)
    validation_split: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 42

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if kind not in ("builtin", "csv", "parquet", "spark") or not rest:
            raise ValueError(
                "expected builtin:<name>, csv:<path>, parquet:<path> or spark:<table>, "
                f"got {value!r}"
            )
        return value

    @field_validator("features", "classes")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"names must be unique, got {value}")
        return value


class PreprocessingSpec(Section):
    scale: Literal["minmax", "standard", "none"] = "none"


MAX_PARAMETERS = 250_000_000
"""A gibibyte of float32 weights (Adam keeps two more copies): the most one machine trains."""

RESERVED_NAMES = frozenset({"features", "scores", "class_index", "predictions", "label", "error"})
"""Names of the graph's input and outputs (and of the batch job's derived columns), which layer
outputs must not shadow."""


class BaseSpec(Section):
    """Transfer learning (`training.base_model`): a trained model's layers up to `until`."""

    model: str
    """A model folder, relative to this model.yaml."""
    version: int | None = Field(default=None, ge=1)
    """The base's version; its latest by default."""
    until: str
    """The last layer taken, by the name `--summary` shows."""
    trainable: bool = False


class NetworkSpec(Section):
    input_shape: list[int] | None = None
    layers: list[LayerSpec] = Field(min_length=1)
    base: BaseSpec | None = None

    @model_validator(mode="after")
    def _shapes(self) -> NetworkSpec:
        first = self.layers[0].input_shape
        if first is not None and self.input_shape is not None and first != self.input_shape:
            raise ValueError(
                f"layers.0.input_shape {first} differs from input_shape {self.input_shape}"
            )
        if any(layer.input_shape is not None for layer in self.layers[1:]):
            raise ValueError("only the first layer may give input_shape")
        names = self.layer_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"layer names must be unique; repeated: {', '.join(duplicates)}")
        reserved = sorted(set(names) & RESERVED_NAMES)
        if reserved:
            raise ValueError(f"layer name(s) {', '.join(reserved)} are reserved for outputs")
        return self

    @property
    def layer_names(self) -> list[str]:
        """Each layer's name: its own, or Keras's `<type>`, `<type>_1`, ... by order of type."""
        seen: Counter[str] = Counter()
        names = []
        for layer in self.layers:
            count = seen[layer.type]
            seen[layer.type] += 1
            names.append(layer.name or (layer.type if count == 0 else f"{layer.type}_{count}"))
        return names

    @property
    def resolved_input_shape(self) -> list[int] | None:
        return self.input_shape or self.layers[0].input_shape

    @property
    def frozen_layers(self) -> list[str]:
        """The base model's layers when they do not learn (`base.trainable: false`)."""
        if self.base is None or self.base.trainable:
            return []
        names = self.layer_names
        return names[: names.index(self.base.until) + 1]

    def input_shape_for(self, n_features: int) -> Shape:
        """The shape of one row: the spec's input_shape, or a vector of the features."""
        return tuple(self.resolved_input_shape or [n_features])

    def shapes(self, n_features: int) -> list[Shape]:
        """Each layer's output shape for one row (Keras's, without the batch axis)."""
        return layer_specs.shapes(self.layers, self.input_shape_for(n_features))


class OptimizerSpec(BaseModel):
    """`adam` or `{name: adam, learning_rate: 0.001, ...}` with Keras's parameter names.

    Parameters are checked per optimizer (the allowed ones differ), not by the section rule.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _params(self) -> OptimizerSpec:
        vocabulary.optimizer_config(self.name, self.params)
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CompileSpec(Section):
    optimizer: OptimizerSpec
    loss: str
    metrics: list[str] = Field(default_factory=list)

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return vocabulary.canonical_loss(value)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        for name in value:
            vocabulary.check_metric(name)
        if len(set(value)) != len(value):
            raise ValueError(f"metrics must be unique, got {value}")
        return value


class EarlyStoppingSpec(Section):
    monitor: str = "val_loss"
    patience: int = Field(default=0, ge=0)
    min_delta: float = Field(default=0.0, ge=0.0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = False


class FitSpec(Section):
    batch_size: int = Field(default=32, gt=0)
    epochs: int = Field(default=1, gt=0)
    shuffle: bool = True
    verbose: Literal[0, 1, 2] = 1
    validation_split: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Keras's place for it; `data.validation_split` is ours. Give one, or both equal."""
    early_stopping: EarlyStoppingSpec | None = None


class Spec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    data: DataSpec
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    network: NetworkSpec = Field(alias="model")
    compile: CompileSpec
    fit: FitSpec = FitSpec()
    serving: dict[str, Any] | None = None
    """Read by the prediction service (version policy, batching); opaque to training."""
    search: SearchSpec | None = None
    """Used by `--search` only (see `training.tuning`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        shape = self.network.resolved_input_shape
        n_features = len(self.data.features)
        if shape is not None and n_features > 1 and math.prod(shape) != n_features:
            raise ValueError(
                f"model.input_shape {shape} does not fit the {n_features} feature(s) "
                f"{self.data.features}; expected [{n_features}] (or one array-valued feature)"
            )
        split = self.fit.validation_split
        given_twice = split is not None and "validation_split" in self.data.model_fields_set
        if given_twice and split != self.data.validation_split:
            raise ValueError("fit.validation_split and data.validation_split differ")
        shapes = self._check_shapes(n_features)
        self._check_outputs(shapes[-1])
        self._check_monitor()
        self._check_size(n_features)
        if self.preprocessing.scale != "none" and isinstance(self.network.layers[0], EmbeddingSpec):
            raise ValueError(
                "preprocessing.scale would scale the token ids of the first layer (embedding); "
                "set it to none"
            )
        return self

    def _check_shapes(self, n_features: int) -> list[Shape]:
        try:
            shapes = self.network.shapes(n_features)
        except LayerError as e:
            raise ValueError(f"model.layers: {e}") from None
        names = self.network.layer_names
        if len(shapes[-1]) != 1:
            raise ValueError(
                f"model.layers: the last layer ({names[-1]}) gives {shapes[-1]} per row, but the "
                "model must give one vector per row; add a flatten or global pooling layer, or "
                "set return_sequences: false"
            )
        return shapes

    def _check_size(self, n_features: int) -> None:
        """Keras's parameter count, before torch is asked for memory it does not have."""
        shape, total = self.network.input_shape_for(n_features), 0
        for layer in self.network.layers:
            total += layer.parameters(shape)
            shape = layer.output_shape(shape)
        if total > MAX_PARAMETERS:
            raise ValueError(
                f"the network has {total:,} parameters ({total * 4 / 2**30:,.1f} GiB of float32 "
                f"weights); at most {MAX_PARAMETERS:,} train here: use fewer units"
            )

    def _check_outputs(self, output: Shape) -> None:
        units, loss = output[0], self.compile.loss
        if loss in vocabulary.SPARSE_LOSSES and units < 2:
            raise ValueError(f"{loss} needs one output unit per class (at least 2), got {units}")
        n = len(self.data.classes or [])
        if n and not units_fit_classes(units, n):
            expected = f"{n} (or 1 for two classes)" if n == 2 else str(n)
            raise ValueError(
                f"the last layer has {units} unit(s) but data.classes names {n} classes; "
                f"expected {expected}"
            )

    def _check_monitor(self) -> None:
        stopping = self.fit.early_stopping
        if stopping is None:
            return
        names = ["loss", *self.compile.metrics]
        known = names + [f"val_{n}" for n in names]
        if stopping.monitor.startswith("val_") and self.validation_split == 0:
            raise ValueError(
                f"fit.early_stopping.monitor {stopping.monitor!r} needs validation rows; "
                "set data.validation_split above 0 or monitor 'loss'"
            )
        if stopping.monitor not in known:
            raise ValueError(
                f"fit.early_stopping.monitor {stopping.monitor!r} is not logged; "
                f"known: {', '.join(known)}"
            )

    @property
    def validation_split(self) -> float:
        if self.fit.validation_split is not None:
            return self.fit.validation_split
        return self.data.validation_split

    @property
    def is_classifier(self) -> bool:
        return (
            self.data.classes is not None or self.compile.loss in vocabulary.CLASSIFICATION_LOSSES
        )


def units_fit_classes(units: int, classes: int) -> bool:
    """One output unit per class, or a single unit for two classes."""
    return units == classes or (units == 1 and classes == 2)


def find_spec_file(path: str | Path) -> Path:
    """`models/x`, `models/x/` or `models/x/model.yaml` → the spec file."""
    path = Path(path)
    file = path / SPEC_FILE if path.is_dir() else path
    if not file.is_file():
        raise SpecError(f"{file}: no such spec file (expected a model folder with {SPEC_FILE})")
    return file


def load_spec(path: str | Path) -> tuple[Spec, Path]:
    """Parse and validate a spec; returns it with the spec file's path."""
    file = find_spec_file(path)
    try:
        raw = load_yaml(file)  # YAML 1.2: `1e-4` is a number, `yes` a string
    except YamlError as e:
        raise SpecError(str(e)) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{file}: expected a mapping of sections (name, data, model, ...)")
    try:
        raw = base_model.splice(raw, file)  # a base model's layers before this spec's own
    except ValueError as e:
        raise SpecError(f"{file}: {e}") from None
    try:
        return Spec.model_validate(raw), file
    except ValidationError as e:
        raise SpecError(f"{file}: {describe(e)}") from e


def spec_sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
