"""Export a PyTorch network to a bundle: preprocessing + network + class head in one ONNX graph.

One path serves both the spec-trained models and any user's tabular `nn.Module`
(`export_module`); a module of named N-d tensors shares steps 3-5 (`tensor_export.py`):
1. wrap scaler → network → (scores | predictions, class_index, hidden layers) in `ServingGraph`;
2. export it with a dynamic batch axis into a temporary folder inside the model folder;
3. write `metadata.json`, then load the folder with `inference.Model.load`, the very loader the
   service uses (checksum and signature verified);
4. check that onnxruntime reproduces PyTorch on the parity rows (≤ 1e-5, relative for values
   above 1), or fail and leave nothing behind;
5. rename the folder to the next free version number, so a reader never sees half a bundle.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import platform
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

import inference
from inference.bundle import sha256_of
from inference.metadata import (
    METADATA_FILE,
    ONNX_FILE,
    BundleMetadata,
    InputInfo,
    OnnxInfo,
    OutputInfo,
    Provenance,
)
from training.activations import Activation
from training.errors import ExportError
from training.network import Sequential
from training.preprocessing import Scaler

INPUT_NAME = "features"
OPSET = 20
PARITY_TOLERANCE = 1e-5


class ServingGraph(nn.Module):
    """Raw features in; the outputs every runtime serves, in a fixed order, out.

    Outputs: `scores` and `class_index` for a classifier (`predictions` otherwise), then the
    activations of the network's hidden layers when it exposes them (`forward_with_hidden`).
    """

    def __init__(
        self,
        network: nn.Module,
        scaler: Scaler,
        feature_names: Sequence[str],
        *,
        classes: Sequence[str] | None = None,
        output_activation: Activation | None = None,
        decision_threshold: float = 0.5,
    ):
        super().__init__()
        self.scaler = scaler
        self.network = network
        self.output_activation = output_activation
        self.feature_names = list(feature_names)
        self.classes = list(classes) if classes is not None else None
        self.decision_threshold = decision_threshold
        # Spec-built networks expose their hidden layers as outputs (for featurization), and
        # may take rows shaped as images or sequences (Keras's input_shape, channels last).
        self.hidden_names: list[str] = []
        self.hidden_shapes: dict[str, tuple[int, ...]] = {}
        self.input_shape: tuple[int, ...] = (len(self.feature_names),)
        if isinstance(network, Sequential):
            self.hidden_names = network.hidden_names
            self.hidden_shapes = network.hidden_shapes
            self.input_shape = network.input_shape

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        z = self.scaler(x.reshape(x.shape[0], -1) if len(self.input_shape) > 1 else x)
        if isinstance(self.network, Sequential) and self.hidden_names:
            y, hidden = self.network.forward_with_hidden(z)
        else:
            y, hidden = self.network(z), []
        if self.output_activation is not None:
            y = self.output_activation(y)
        if self.classes is None:
            return (y, *hidden)
        return (y, self.class_index(y), *hidden)

    @property
    def tabular(self) -> bool:
        """One row is a vector of the named features (not an image or a sequence)."""
        return self.input_shape == (len(self.feature_names),)

    @property
    def output_names(self) -> list[str]:
        main = ["predictions"] if self.classes is None else ["scores", "class_index"]
        return main + self.hidden_names

    def class_index(self, scores: Tensor) -> Tensor:
        return predicted_class(scores, self.decision_threshold)

    def output_infos(self, out_width: int) -> list[OutputInfo]:
        if self.classes is None:
            main = [
                OutputInfo(
                    name="predictions",
                    datatype="FP32",
                    shape=[-1, out_width],
                    role="predictions",
                    description="the model's outputs",
                )
            ]
        else:
            main = [
                OutputInfo(
                    name="scores",
                    datatype="FP32",
                    shape=[-1, out_width],
                    role="scores",
                    description="class scores, in the order of 'classes'",
                ),
                OutputInfo(
                    name="class_index",
                    datatype="INT64",
                    shape=[-1],
                    role="class_index",
                    description="index of the predicted class in 'classes'",
                ),
            ]
        hidden = [
            OutputInfo(
                name=name,
                datatype="FP32",
                shape=[-1, *self.hidden_shapes[name]],
                role="layer",
                description=f"activations of layer {name!r}",
            )
            for name in self.hidden_names
        ]
        return main + hidden


def predicted_class(scores: Tensor, threshold: float) -> Tensor:
    """The class index a classifier's graph gives beside its scores, so that every runtime
    labels a row the same way: one unit is class 1 above `threshold`, several are argmax."""
    if scores.shape[-1] == 1:
        return (scores[:, 0] > threshold).to(torch.int64)
    return torch.argmax(scores, dim=-1)


def export_bundle(
    graph: ServingGraph,
    model_dir: str | Path,
    *,
    name: str,
    parity_rows: np.ndarray,
    description: str = "",
    metrics: dict[str, float] | None = None,
    history: dict[str, list[float]] | None = None,
    provenance: dict[str, Any] | None = None,
    plot: Callable[[Path], None] | None = None,
) -> Path:
    """Write the next version of `model_dir` from `graph`; returns the version folder."""
    model_dir = Path(model_dir)
    graph = graph.eval()
    rows = np.ascontiguousarray(parity_rows, dtype=np.float32).reshape(-1, *graph.input_shape)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(torch.from_numpy(rows))]
    with staging_folder(model_dir) as staging:
        _export_onnx(graph, rows, staging / ONNX_FILE)
        out_width = expected[0].shape[1]
        metadata = BundleMetadata(
            name=name,
            version=_next_version(model_dir),
            description=description,
            task="classification" if graph.classes is not None else "regression",
            inputs=[
                InputInfo(
                    name=INPUT_NAME,
                    datatype="FP32",
                    shape=[-1, *graph.input_shape],
                    feature_names=graph.feature_names if graph.tabular else None,
                    description="raw feature values, unscaled"
                    if graph.tabular
                    else f"{', '.join(graph.feature_names)}: {list(graph.input_shape)} per row",
                )
            ],
            outputs=graph.output_infos(out_width),
            classes=graph.classes,
            decision_threshold=graph.decision_threshold
            if graph.classes and out_width == 1
            else None,
            preprocessing=graph.scaler.to_metadata(),
            metrics=metrics or {},
            history=history or {},
            onnx=_onnx_info(staging / ONNX_FILE),
            provenance=made_here(provenance),
        )
        return publish_checked(staging, model_dir, metadata, rows, expected, plot=plot)


def made_here(provenance: dict[str, Any] | None) -> Provenance:
    """Provenance stamped now with the library versions, so the bundle can be rebuilt."""
    return Provenance(created_at=datetime.now(UTC), versions=_versions(), **(provenance or {}))


@contextlib.contextmanager
def staging_folder(model_dir: Path) -> Iterator[Path]:
    """A fresh hidden folder inside the model folder, removed whatever happens: on the same
    file system as the versions, so that publishing it is one atomic rename."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_checked(
    staging: Path,
    model_dir: Path,
    metadata: BundleMetadata,
    feeds: np.ndarray | Mapping[str, np.ndarray],
    expected: list[np.ndarray],
    *,
    plot: Callable[[Path], None] | None = None,
) -> Path:
    """Write the metadata, prove onnxruntime reproduces PyTorch through the service's loader,
    record the difference, and only then publish the staging folder as the next version."""
    _write_metadata(staging, metadata)
    diff = check_parity(staging, feeds, expected)
    made = metadata.provenance
    if made is not None:
        made = made.model_copy(update={"parity_max_abs_diff": diff})
    metadata = metadata.model_copy(update={"provenance": made})
    if plot is not None:
        plot(staging / "training.png")
    return _publish(staging, model_dir, metadata)


def check_parity(
    bundle_dir: Path, feeds: np.ndarray | Mapping[str, np.ndarray], expected: list[np.ndarray]
) -> float:
    """Run the bundle as the service would and compare with PyTorch; returns the max abs diff.

    `feeds` are a tabular graph's rows, or named tensors, which are checked against the
    signature first exactly as every front end checks them."""
    model = inference.load(bundle_dir, options=inference.RuntimeOptions(intra_op_threads=1))
    names = [o.name for o in model.metadata.outputs]
    try:
        checked = {INPUT_NAME: feeds} if isinstance(feeds, np.ndarray) else model.check(feeds)
        actual = model.run(checked, names).outputs
    except Exception as e:  # our refusal of the samples, or onnxruntime's untyped errors
        raise ExportError(
            f"onnxruntime cannot run the exported graph on the samples: {first_line(e)}"
        ) from e
    return max(
        (_compare(name, actual[name], want) for name, want in zip(names, expected, strict=True)),
        default=0.0,
    )


def first_line(error: Exception) -> str:
    """An error's first line, for a one-line message; the whole of it stays chained."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _compare(name: str, got: np.ndarray, want: np.ndarray) -> float:
    """The max abs diff of one output; floats within tolerance, everything else equal."""
    if got.shape != want.shape:
        raise ExportError(
            f"onnxruntime's {name!r} has shape {list(got.shape)} where PyTorch's has "
            f"{list(want.shape)}; the export is not faithful (a size fixed when it was traced?)"
        )
    if want.dtype.kind == "f" and not np.isfinite(want).all():
        bad = int((~np.isfinite(want)).any(axis=tuple(range(1, want.ndim))).sum())
        raise ExportError(
            f"PyTorch's {name!r} is nan or infinite on {bad} of {len(want)} sample row(s); "
            "a bundle must answer with numbers (did training diverge?)"
        )
    if got.dtype.kind != "f":
        if not np.array_equal(got, want):
            raise ExportError(
                f"onnxruntime's {name!r} differs from PyTorch's on "
                f"{int((got != want).sum())} value(s); the export is not faithful"
            )
        return 0.0
    diff = np.abs(got.astype(np.float64) - want)
    allowed = PARITY_TOLERANCE * np.maximum(1.0, np.abs(want))
    if np.any(diff > allowed):
        raise ExportError(
            f"onnxruntime differs from PyTorch on output {name!r}: max abs diff "
            f"{diff.max():.3g} > {PARITY_TOLERANCE:g}; the export is not faithful"
        )
    return float(diff.max(initial=0.0))


def _export_onnx(graph: ServingGraph, rows: np.ndarray, path: Path) -> None:
    # A batch of 2+ rows keeps the batch axis symbolic (size 1 would be specialised).
    example = torch.zeros((max(2, min(len(rows), 8)), *graph.input_shape))
    placeholders = [f"output.{i}" for i in range(len(graph.output_names))]
    try:
        with _quiet_exporter():
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=placeholders,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                opset_version=OPSET,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many unrelated types; keep the cause
        raise ExportError(f"torch.onnx.export failed: {e}") from e
    proto = onnx.load(str(path))
    _name_outputs(proto.graph, dict(zip(placeholders, graph.output_names, strict=True)))
    onnx.save(proto, str(path))


def _name_outputs(graph: onnx.GraphProto, names: Mapping[str, str]) -> None:
    """Give the outputs their names. The exporter names inner values after their ops
    (`conv2d`, `lstm`, `embedding`), which are also Keras's layer names: an output named in
    the export would then be defined twice, and onnxruntime refuses such a graph. So the outputs
    are exported under placeholders, the inner values that hold a wanted name are renamed,
    and then the placeholders become the names."""
    wanted = set(names.values())
    taken = {v for node in graph.node for v in (*node.input, *node.output)} | {
        i.name for i in (*graph.input, *graph.initializer)
    }
    renames = {}
    for value in sorted(wanted & taken):
        fresh = next(f"{value}.{i}" for i in itertools.count() if f"{value}.{i}" not in taken)
        renames[value] = fresh
    renames.update(names)
    for node in graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    for info in (*graph.output, *graph.value_info, *graph.input, *graph.initializer):
        info.name = renames.get(info.name, info.name)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs notes (e.g. torchvision absent) that are no concern of the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_info(path: Path) -> OnnxInfo:
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    return OnnxInfo(
        file=ONNX_FILE,
        sha256=sha256_of(path),
        opset=opset,
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
    )


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _next_version(model_dir: Path) -> int:
    return max([0, *(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())]) + 1


def _write_metadata(folder: Path, metadata: BundleMetadata) -> None:
    text = json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n"
    (folder / METADATA_FILE).write_text(text)


def _publish(staging: Path, model_dir: Path, metadata: BundleMetadata) -> Path:
    """Rename the staging folder to the next free version; retry if another export won a race."""
    for _ in range(100):
        target = model_dir / str(metadata.version)
        _write_metadata(staging, metadata)
        try:
            os.rename(staging, target)  # atomic; fails if the target exists and is not empty
            return target
        except OSError:
            if not target.exists():
                raise
            metadata = metadata.model_copy(update={"version": _next_version(model_dir)})
    raise ExportError(f"{model_dir}: could not claim a free version number")
