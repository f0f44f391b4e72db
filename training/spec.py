"""The model spec (`model.yaml`), in Keras's vocabulary, parsed and checked before any work.

Every problem is reported as `<file>: <key.path>: <what was expected>`, so a typo in a layer
name reads like `models/x/model.yaml: model.layers.1.activation: unknown activation 'rleu';
known: elu, exponential, ...` instead of a traceback ten seconds into training.

What every section shares (unknown keys refused, errors worded) is in `training.sections`; the
`search:` section, used by `--search` only, is in `training.search_spec`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inference.yaml_files import YamlError, load_yaml
from training import activations, losses, metrics, optimizers
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


def _activation(value: str) -> str:
    activations.get(value)
    return value.lower()


class _Layer(Section):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    input_shape: list[int] | None = None


class DenseSpec(_Layer):
    type: Literal["dense"]
    units: int = Field(gt=0)
    activation: Annotated[str, Field(validate_default=True)] = "linear"
    use_bias: bool = True
    kernel_initializer: Literal["glorot_uniform"] = "glorot_uniform"
    bias_initializer: Literal["zeros"] = "zeros"

    _check_activation = field_validator("activation")(_activation)


class ActivationSpec(_Layer):
    type: Literal["activation"]
    activation: str

    _check_activation = field_validator("activation")(_activation)


class DropoutSpec(_Layer):
    type: Literal["dropout"]
    rate: float = Field(ge=0.0, lt=1.0)


class BatchNormalizationSpec(_Layer):
    type: Literal["batch_normalization"]
    momentum: float = Field(default=0.99, gt=0.0, lt=1.0)
    epsilon: float = Field(default=1e-3, gt=0.0)
    center: bool = True
    scale: bool = True


MAX_PARAMETERS = 250_000_000
"""A gibibyte of float32 weights (Adam keeps two more copies): the most one machine trains."""

RESERVED_NAMES = frozenset({"features", "scores", "class_index", "predictions", "label", "error"})
"""Names of the graph's input and outputs (and of the batch job's derived columns), which layer
outputs must not shadow."""

LayerSpec = Annotated[
    DenseSpec | ActivationSpec | DropoutSpec | BatchNormalizationSpec, Field(discriminator="type")
]


class NetworkSpec(Section):
    input_shape: list[int] | None = None
    layers: list[LayerSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _shapes(self) -> NetworkSpec:
        first = self.layers[0].input_shape
        if first is not None and self.input_shape is not None and first != self.input_shape:
            raise ValueError(
                f"layers.0.input_shape {first} differs from input_shape {self.input_shape}"
            )
        if any(layer.input_shape is not None for layer in self.layers[1:]):
            raise ValueError("only the first layer may give input_shape")
        if not any(isinstance(layer, DenseSpec) for layer in self.layers):
            raise ValueError("the network needs at least one dense layer")
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
    def output_units(self) -> int:
        return next(x.units for x in reversed(self.layers) if isinstance(x, DenseSpec))


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
        optimizers.normalize(self.name, self.params)
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
        return losses.canonical(value)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        for name in value:
            metrics.check(name)
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
    """Used by `--search` only (see `training.search`)."""

    @model_validator(mode="after")
    def _consistent(self) -> Spec:
        shape = self.network.resolved_input_shape
        n_features = len(self.data.features)
        if shape is not None and shape != [n_features]:
            raise ValueError(
                f"model.input_shape {shape} does not fit the {n_features} feature(s) "
                f"{self.data.features}; expected [{n_features}]"
            )
        split = self.fit.validation_split
        given_twice = split is not None and "validation_split" in self.data.model_fields_set
        if given_twice and split != self.data.validation_split:
            raise ValueError("fit.validation_split and data.validation_split differ")
        self._check_outputs()
        self._check_monitor()
        self._check_size(n_features)
        return self

    def _check_size(self, width: int) -> None:
        """Keras's parameter count, before torch is asked for memory it does not have."""
        total = 0
        for layer in self.network.layers:
            if isinstance(layer, DenseSpec):
                total += width * layer.units + (layer.units if layer.use_bias else 0)
                width = layer.units
            elif isinstance(layer, BatchNormalizationSpec):
                total += (2 + layer.center + layer.scale) * width
        if total > MAX_PARAMETERS:
            raise ValueError(
                f"the network has {total:,} parameters ({total * 4 / 2**30:,.1f} GiB of float32 "
                f"weights); at most {MAX_PARAMETERS:,} train here: use fewer units"
            )

    def _check_outputs(self) -> None:
        units, loss = self.network.output_units, self.compile.loss
        if loss in losses.SPARSE and units < 2:
            raise ValueError(f"{loss} needs one output unit per class (at least 2), got {units}")
        n = len(self.data.classes or [])
        if n and not units_fit_classes(units, n):
            expected = f"{n} (or 1 for two classes)" if n == 2 else str(n)
            raise ValueError(
                f"the last dense layer has {units} unit(s) but data.classes names {n} classes; "
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
        return self.data.classes is not None or self.compile.loss in losses.CLASSIFICATION


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
        return Spec.model_validate(raw), file
    except ValidationError as e:
        raise SpecError(f"{file}: {describe(e)}") from e


def spec_sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
