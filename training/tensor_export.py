"""Export a module that takes named tensors of any rank (images, token ids and masks, ...).

    export_module(net, "models/tokens",
                  sample_inputs={"input_ids": ids, "attention_mask": mask},   # int64 [N, L]
                  output_names=["logits"],
                  dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})

The samples are one batch of every input: they give the graph its input names, dtypes and ranks,
they are what the exporter traces, and, one row longer, what the parity check runs (a batch size
the trace never saw, so a batch axis frozen by the trace is caught). The first axis of every
input and output is the dynamic batch axis; other axes are dynamic only where `dynamic_axes` names
them, because the trace fixes every size it is not told about.

The TorchScript exporter (`dynamo=False`) is used here: `dynamic_axes` names the dynamic axes of
several inputs and outputs in one mapping, and it exports N-d and multi-input modules quickly.
The tabular path (`export.py`) keeps the dynamo exporter.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

import inference
from inference.metadata import ONNX_FILE, BundleMetadata, InputInfo, OutputInfo, OutputRole
from training.activations import Activation
from training.errors import ExportError
from training.export import (
    OPSET,
    _next_version,
    _onnx_info,
    _quiet_exporter,
    first_line,
    made_here,
    predicted_class,
    publish_checked,
    staging_folder,
)
from training.spec import units_fit_classes
from training.tensor_args import (
    AxesSpec,
    DimLabels,
    Feeds,
    axes_of,
    describe,
    sample_feeds,
    shapes_of,
)

CLASS_INDEX: OutputRole = "class_index"
ROLE_TEXT = {
    "scores": "class scores, in the order of 'classes'",
    "class_index": "index of the predicted class in 'classes'",
}


class TensorGraph(nn.Module):
    """Named tensors in; the module's outputs, plus a classifier's class index, out as one flat
    tuple the exporter can name. Split in `call` and `finish` so that one run of the module
    gives both its raw answer (whose dict keys name the outputs) and the graph's outputs."""

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        *,
        output_activation: Activation | None,
        classes: Sequence[str] | None,
        decision_threshold: float,
    ):
        super().__init__()
        self.module = module
        self.input_names = list(input_names)
        self.by_keyword = _takes_by_name(module, self.input_names)
        self.output_activation = output_activation
        self.classes = list(classes) if classes is not None else None
        self.decision_threshold = decision_threshold

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return self.finish(self.call(*tensors))

    def call(self, *tensors: Tensor) -> Any:
        if self.by_keyword:
            return self.module(**dict(zip(self.input_names, tensors, strict=True)))
        return self.module(*tensors)

    def finish(self, result: Any) -> tuple[Tensor, ...]:
        outputs = list(_flat(result))
        if self.output_activation is not None:
            outputs[0] = self.output_activation(outputs[0])
        if self.classes is not None:
            outputs.insert(1, predicted_class(outputs[0], self.decision_threshold))
        return tuple(outputs)


def _takes_by_name(module: nn.Module, names: Sequence[str]) -> bool:
    """Samples bind to `forward`'s parameters by name when every name is one of them (a
    Hugging Face model's `input_ids`, `attention_mask`, ...), else in the dict's order."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented forward has no signature
        return False
    return all(name in parameters for name in names)


def _flat(result: Any) -> list[Tensor]:
    """A tensor, a tuple or list of tensors, or a dict of them (a Hugging Face ModelOutput)."""
    values = list(result.values()) if isinstance(result, Mapping) else result
    values = [values] if isinstance(values, Tensor) else values
    if not isinstance(values, list | tuple) or not values:
        raise ExportError(f"the module must return tensors; it returned {type(result).__name__}")
    for index, value in enumerate(values):
        if not isinstance(value, Tensor):
            raise ExportError(
                f"the module's output {index} is a {type(value).__name__}, not a tensor; wrap "
                "the module so that it returns a tensor, a tuple or a dict of tensors"
            )
    return list(values)


def export_tensors(
    module: nn.Module,
    model_dir: Path,
    *,
    sample_inputs: Any,
    output_names: Sequence[str] | None,
    dynamic_axes: AxesSpec | None,
    classes: Sequence[str] | None,
    output_activation: Activation | None,
    decision_threshold: float,
    name: str,
    description: str,
    metrics: Mapping[str, float],
) -> Path:
    """Write the next version of `model_dir` from a module of named tensors."""
    samples = sample_feeds(sample_inputs)
    parity = {key: np.concatenate([a, a[:1]]) for key, a in samples.items()}
    graph = TensorGraph(
        module,
        list(samples),
        output_activation=output_activation,
        classes=classes,
        decision_threshold=decision_threshold,
    ).eval()
    names, expected = _run(graph, samples, parity, output_names)
    axes = axes_of(
        shapes_of(samples) | shapes_of(dict(zip(names, expected, strict=True))), dynamic_axes
    )
    single_unit = classes is not None and expected[0].shape[1] == 1
    known: dict[str, Any] = {
        "name": name,
        "description": description,
        "task": "classification" if classes is not None else None,
        "classes": list(classes) if classes is not None else None,
        "decision_threshold": decision_threshold if single_unit else None,
        "metrics": dict(metrics),
        "provenance": made_here({"source": "module", "rows": {"parity": len(expected[0])}}),
    }
    with staging_folder(model_dir) as staging:
        _trace(graph, samples, names, axes, staging / ONNX_FILE)
        signature = _signature(staging, list(samples))
        labels = _dim_labels(staging / ONNX_FILE)
        metadata = BundleMetadata(
            **known,
            version=_next_version(model_dir),
            inputs=[_input(t, i, graph.by_keyword, labels) for i, t in enumerate(signature.inputs)],
            outputs=[_output(t, i, classes, labels) for i, t in enumerate(signature.outputs)],
            onnx=_onnx_info(staging / ONNX_FILE),
        )
        return publish_checked(staging, model_dir, metadata, parity, expected)


def _run(
    graph: TensorGraph, samples: Feeds, feeds: Feeds, output_names: Sequence[str] | None
) -> tuple[list[str], list[np.ndarray]]:
    """Run the module once on the parity feeds: its output names and the expected outputs,
    so that a mistake is a clear error here, not an exporter traceback later."""
    tensors = [torch.from_numpy(array) for array in feeds.values()]
    with torch.no_grad():
        try:
            result = graph.call(*tensors)
        except Exception as e:  # any error inside the user's forward()
            raise ExportError(
                f"the module failed on sample_inputs ({describe(samples)}) with their first "
                f"row repeated at the end: {first_line(e)}"
            ) from e
        _check_classes(_flat(result)[0], graph.classes)
        outputs = [t.numpy() for t in graph.finish(result)]
    names = _output_names(result, output_names, graph.classes, list(feeds))
    _check_batch_axis(names, outputs, len(tensors[0]))
    return names, outputs


def _check_classes(scores: Tensor, classes: Sequence[str] | None) -> None:
    if classes is None:
        return
    n = len(classes)
    if (
        scores.ndim != 2
        or not scores.is_floating_point()
        or not units_fit_classes(scores.shape[1], n)
    ):
        raise ExportError(
            f"with {n} classes the module's first output must be float scores [rows, {n}]"
            f"{' (or [rows, 1])' if n == 2 else ''}; it is {scores.dtype} {list(scores.shape)}"
        )


def _output_names(
    result: Any, given: Sequence[str] | None, classes: Sequence[str] | None, inputs: list[str]
) -> list[str]:
    """The given names, a returned dict's keys, or `output`, `output_1`, ... (`scores` first
    for a classifier); a classifier's `class_index` goes second."""
    count = len(_flat(result))
    if given is not None:
        names = list(given)
        if len(names) != count:
            raise ExportError(
                f"output_names has {len(names)} name(s) for the module's {count} output(s)"
            )
    elif isinstance(result, Mapping):
        names = [str(key) for key in result]
    else:
        names = ["scores" if classes is not None else "output"]
        names += [f"output_{i}" for i in range(1, count)]
    if classes is not None:
        names.insert(1, CLASS_INDEX)
    if len(set(names + inputs)) != len(names) + len(inputs):
        raise ExportError(
            f"output names {names} repeat a name or an input's name ({inputs}); a classifier's "
            f"{CLASS_INDEX!r} output is added by the export"
        )
    return names


def _check_batch_axis(names: list[str], outputs: list[np.ndarray], rows: int) -> None:
    for name, value in zip(names, outputs, strict=True):
        if value.ndim == 0 or value.shape[0] != rows:
            raise ExportError(
                f"output {name!r} has shape {list(value.shape)} for a batch of {rows}: every "
                "output needs the batch axis first"
            )


def _trace(
    graph: TensorGraph,
    feeds: Feeds,
    outputs: list[str],
    axes: DimLabels,
    path: Path,
) -> None:
    args = tuple(torch.from_numpy(array) for array in feeds.values())
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                graph,
                args,
                str(path),
                input_names=list(feeds),
                output_names=outputs,
                dynamic_axes=axes,
                dynamo=False,
                opset_version=OPSET,
            )
    except Exception as e:  # the exporter raises many unrelated types; keep the cause
        raise ExportError(f"torch.onnx.export failed: {first_line(e)}") from e


def _signature(staging: Path, inputs: list[str]) -> BundleMetadata:
    """The graph's signature as the service reads it from a bare `model.onnx`."""
    options = inference.RuntimeOptions(intra_op_threads=1)
    signature = inference.load(staging, options=options).metadata
    dropped = [name for name in inputs if name not in {i.name for i in signature.inputs}]
    if dropped:
        raise ExportError(
            f"the exported graph has no input {', '.join(map(repr, dropped))}: the module does "
            "not use it, and the exporter drops unused inputs; leave it out of sample_inputs"
        )
    return signature


def _input(info: InputInfo, index: int, by_keyword: bool, axes: DimLabels) -> InputInfo:
    where = f"argument {info.name!r}" if by_keyword else f"positional argument {index + 1}"
    text = f"the module's {where}{_axes_text(axes[info.name])}"
    return info.model_copy(update={"description": text})


def _output(
    info: OutputInfo, index: int, classes: Sequence[str] | None, axes: DimLabels
) -> OutputInfo:
    """A classifier's first two outputs are its scores and class index; the rest plain."""
    roles: list[OutputRole] = ["scores", CLASS_INDEX] if classes is not None else []
    role = roles[index] if index < len(roles) else "output"
    text = ROLE_TEXT.get(role, "an output of the module") + _axes_text(axes[info.name])
    return info.model_copy(update={"role": role, "description": text})


def _dim_labels(path: Path) -> DimLabels:
    """Each graph tensor's symbolic dimensions, as the exporter named them: those given in
    `dynamic_axes`, and those its shape inference carried to the outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        tensor.name: {
            axis: dim.dim_param
            for axis, dim in enumerate(tensor.type.tensor_type.shape.dim)
            if dim.dim_param
        }
        for tensor in [*graph.input, *graph.output]
    }


def _axes_text(axes: Mapping[int, str]) -> str:
    named = ", ".join(f"{axis} ({label})" for axis, label in sorted(axes.items()))
    return f"; dynamic axes: {named}" if named else ""
