"""Build a `ScoringSpec` from a loaded model: which columns feed which inputs, which outputs
come back, refusing before any work what cannot be scored one table row at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import inference
from batch.errors import ScoringError
from batch.spec import ScoringSpec, TensorInput, TensorOutput, output_layout
from inference.inputs import FLOATS
from inference.metadata import BundleMetadata, InputInfo, OutputInfo


def spec_for(
    model: inference.Model,
    outputs: Sequence[str] | None,
    features_column: str | None,
    *,
    input_columns: Mapping[str, str] | None = None,
    shipped_name: str = "",
    threads: int = 1,
    providers: Sequence[str] = ("cpu",),
    allow_cpu_fallback: bool = False,
) -> ScoringSpec:
    """The spec that scores with `model` (its output names already checked by the caller).
    `input_columns` maps input names to columns (by default each input's own name); for a
    tabular model its one entry names the array column of features, as `features_column`."""
    meta = model.metadata
    names = list(outputs) if outputs else meta.default_outputs
    _check_mapping(meta, input_columns)
    if meta.tabular is not None:
        layout = _tabular_layout(meta.tabular, meta, names, features_column, input_columns)
    else:
        layout = _tensor_layout(meta, names, features_column, input_columns or {})
    spec = ScoringSpec(
        shipped_name=shipped_name,
        driver_path=str(model.path.resolve()),
        sha256=meta.onnx.sha256,
        threads=threads,
        outputs=tuple(names),
        classes=tuple(meta.classes) if meta.classes else None,
        providers=tuple(providers),
        allow_cpu_fallback=allow_cpu_fallback,
        **layout,
    )
    _check_columns(spec)
    return spec


def _tabular_layout(
    tabular: InputInfo,
    meta: BundleMetadata,
    names: list[str],
    features_column: str | None,
    input_columns: Mapping[str, str] | None,
) -> dict[str, Any]:
    known = {o.name: o for o in meta.outputs}
    return {
        "feature_names": tuple(meta.feature_names),
        "features_column": _features_column(tabular, features_column, input_columns),
        "widths": tuple(known[n].shape[1] if len(known[n].shape) == 2 else 0 for n in names),
    }


def _tensor_layout(
    meta: BundleMetadata,
    names: list[str],
    features_column: str | None,
    input_columns: Mapping[str, str],
) -> dict[str, Any]:
    known = {o.name: o for o in meta.outputs}
    chosen = [known[n] for n in names]
    return {
        "feature_names": (),
        "features_column": None,
        "widths": (),
        "tensor_inputs": tensor_inputs(meta, features_column, input_columns),
        "tensor_outputs": tuple(_tensor_output(o) for o in chosen),
        "rows_per_run": 0 if all(t.shape[0] == -1 for t in [*meta.inputs, *chosen]) else 1,
        "scores_output": _role(meta, chosen, "scores"),
        "label_from": _role(meta, chosen, "class_index"),
    }


def _check_columns(spec: ScoringSpec) -> None:
    """Two outputs may not make one column (names that differ only in characters a column
    name cannot hold, or an output called `error`)."""
    seen: dict[str, str] = {}
    for column in output_layout(spec, ""):
        if column.name in seen:
            raise ScoringError(
                f"outputs {seen[column.name]!r} and {column.field!r} would both be the column "
                f"<prefix>{column.name}; choose the outputs to add with outputs=[...] (--outputs)"
            )
        seen[column.name] = column.field


def parse_column_map(text: str) -> dict[str, str]:
    """`input=column,...` (the CLI's and a Param's text form of `input_columns`) as a dict."""
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in pairs if item.count("=") != 1 or "" in item.split("=")]
    if bad or not pairs:
        raise ValueError(
            f"expected input=column pairs separated by commas, e.g. image=pixels; got {text!r}"
        )
    mapping = {name.strip(): column.strip() for name, column in (p.split("=") for p in pairs)}
    if len(mapping) != len(pairs):
        raise ValueError(f"an input is named twice in {text!r}")
    return mapping


def tensor_inputs(
    meta: BundleMetadata, features_column: str | None, input_columns: Mapping[str, str]
) -> tuple[TensorInput, ...]:
    """Each input with its column: mapped, else the `features_column` of a one-input model,
    else the column named like the input."""
    if features_column is not None and len(meta.inputs) > 1:
        raise ScoringError(
            f"this model has {len(meta.inputs)} inputs "
            f"({', '.join(repr(i.name) for i in meta.inputs)}): name their columns with "
            "input_columns (--input-columns), not features_column"
        )
    return tuple(
        TensorInput(
            name=info.name,
            column=input_columns.get(info.name, features_column or info.name),
            datatype=info.datatype,
            shape=tuple(_row_shape(info, "input")),
            finite=info.datatype in FLOATS and not info.accepts_non_finite,
        )
        for info in meta.inputs
    )


def _tensor_output(info: OutputInfo) -> TensorOutput:
    return TensorOutput(info.name, info.datatype, len(_row_shape(info, "output")))


def _row_shape(info: InputInfo | OutputInfo, kind: str) -> list[int]:
    """The shape of one row: the tensor's shape without its first axis, which must be the batch
    axis (-1), or 1 for a graph that takes one row at a time."""
    if not info.shape or info.shape[0] not in (-1, 1):
        raise ScoringError(
            f"{kind} {info.name!r} has shape {info.shape}: its first dimension is not a batch "
            "axis (-1, or 1 for one row at a time), so it cannot be scored one table row at "
            "a time"
        )
    return info.shape[1:]


def _role(meta: BundleMetadata, chosen: list[OutputInfo], role: str) -> str | None:
    """The requested output of `role` in a classifier that names its classes."""
    if not meta.classes:
        return None
    output = next((o for o in chosen if o.role == role), None)
    if output is None:
        return None
    if role == "class_index":
        integers = output.datatype.startswith(("INT", "UINT"))
        return output.name if integers and len(output.shape) == 1 else None
    return output.name if output.shape[1:] == [len(meta.classes)] else None


def _check_mapping(meta: BundleMetadata, input_columns: Mapping[str, str] | None) -> None:
    unknown = [name for name in input_columns or {} if name not in {i.name for i in meta.inputs}]
    if unknown:
        raise ScoringError(
            f"input_columns names unknown input(s) {', '.join(map(repr, unknown))}; this model "
            f"takes: {', '.join(repr(i.name) for i in meta.inputs)}"
        )


def _features_column(
    tabular: InputInfo, features_column: str | None, input_columns: Mapping[str, str] | None
) -> str | None:
    """A tabular model's one array column, given either way (never both)."""
    mapped = (input_columns or {}).get(tabular.name)
    if mapped is not None and features_column is not None and mapped != features_column:
        raise ScoringError(
            f"input {tabular.name!r} is given two columns: features_column {features_column!r} "
            f"and input_columns {mapped!r}"
        )
    return mapped or features_column
