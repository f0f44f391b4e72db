"""Real graphs from real exporters, written as bare `model.onnx` files into a model repository:
what a user brings. Each maker returns the version folder it wrote.

- `digits_sklearn`: a scikit-learn pipeline (scaler + logistic regression) on the bundled digits,
  converted with skl2onnx: input `X` FP32 [-1, 64]; outputs `label` INT64 [-1] and
  `probabilities` FP32 [-1, 10].
- `digits_cnn`: a small torch CNN on [N, 1, 8, 8] images (`torch.onnx.export`): input `image`,
  outputs `scores` FP32 [-1, 10] and `features` FP32 [-1, 4, 4, 4] (a rank-4 output).
- `tokens`: a two-input token model (`input_ids`, `attention_mask`, INT64 [-1, -1]): outputs
  `logits` FP32 [-1, 2] and `hidden` FP32 [-1, -1, 8] (a dynamic sequence axis).
- `strings`: ONNX's own StringNormalizer (built with onnx.helper): `text` BYTES [-1] in,
  `lower` BYTES [-1] out.
- `zipmap`: the digits pipeline converted with skl2onnx's defaults, whose probabilities are a
  ZipMap (a sequence of maps, not a tensor): a graph the service must refuse, saying why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0


def digits_sklearn(repo: Path, name: str = "digits_sklearn") -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    classifier = LogisticRegression(max_iter=300)
    pipeline = make_pipeline(StandardScaler(), classifier).fit(x, y)
    graph = to_onnx(pipeline, x[:1], options={id(classifier): {"zipmap": False}})
    return _write(repo / name / "1", graph.SerializeToString())


def strings(repo: Path, name: str = "strings") -> Path:
    from onnx import TensorProto, helper

    node = helper.make_node(
        "StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C"
    )
    graph = helper.make_graph(
        [node],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("lower", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _write(repo / name / "1", model.SerializeToString())


DTYPES = {
    "u8": ("UINT8", np.uint8), "i8": ("INT8", np.int8), "i16": ("INT16", np.int16),
    "u16": ("UINT16", np.uint16), "i32": ("INT32", np.int32), "u32": ("UINT32", np.uint32),
    "u64": ("UINT64", np.uint64), "f16": ("FP16", np.float16), "f64": ("FP64", np.float64),
    "b": ("BOOL", np.bool_),
}  # fmt: skip
"""The `dtypes` graph's inputs: name → (datatype, numpy type)."""


def dtypes(repo: Path, name: str = "dtypes") -> Path:
    """Identity for one input of every other tensor type, each [-1, 2] in and `<name>_out`."""
    from onnx import helper
    from onnx.helper import np_dtype_to_tensor_dtype

    nodes, inputs, outputs = [], [], []
    for key, (_, numpy_type) in DTYPES.items():
        kind = np_dtype_to_tensor_dtype(np.dtype(numpy_type))
        nodes.append(helper.make_node("Identity", [key], [f"{key}_out"]))
        inputs.append(helper.make_tensor_value_info(key, kind, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"{key}_out", kind, ["batch", 2]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _write(repo / name / "1", model.SerializeToString())


def dtype_batch(rows: int = 2) -> dict[str, np.ndarray]:
    """Values at the edges of each type's range."""
    feeds = {}
    for key, (_, numpy_type) in DTYPES.items():
        if numpy_type is np.bool_:
            feeds[key] = np.array([[True, False]] * rows)
        elif np.dtype(numpy_type).kind == "f":
            feeds[key] = np.array([[-1.5, 65504.0]] * rows, numpy_type)
        else:
            info = np.iinfo(numpy_type)
            feeds[key] = np.array([[info.min, info.max]] * rows, numpy_type)
    return feeds


def zipmap(repo: Path, name: str = "zipmap") -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = DecisionTreeClassifier(max_depth=3, random_state=SEED).fit(x, y)
    return _write(repo / name / "1", to_onnx(model, x[:1]).SerializeToString())


def digits_images(count: int = 6) -> np.ndarray:
    """The first digits as [count, 1, 8, 8] float32 images, pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:count] / 16.0).astype(np.float32)[:, None, :, :]


def digits_cnn(repo: Path, name: str = "digits_cnn") -> Path:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.head = nn.Linear(64, 10)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.conv(image)
            return torch.softmax(self.head(features.flatten(1)), dim=-1), features

    torch.manual_seed(SEED)
    return _export(
        Net().eval(),
        (torch.zeros(2, 1, 8, 8),),
        repo / name / "1",
        inputs=["image"],
        outputs=["scores", "features"],
        dynamic={"image": {0: "batch"}, "scores": {0: "batch"}, "features": {0: "batch"}},
    )


def tokens(repo: Path, name: str = "tokens", vocabulary: int = 100) -> Path:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocabulary, 8)
            self.head = nn.Linear(8, 2)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            hidden = self.embedding(input_ids) * mask
            pooled = hidden.sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled), hidden

    torch.manual_seed(SEED)
    ids = torch.ones(2, 3, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    return _export(
        Net().eval(),
        (ids, ids),
        repo / name / "1",
        inputs=["input_ids", "attention_mask"],
        outputs=["logits", "hidden"],
        dynamic={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}, "hidden": axes},
    )


def token_batch(rows: int = 3, length: int = 5, seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, (rows, length), dtype=np.int64)
    mask = np.ones((rows, length), np.int64)
    mask[0, length - 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _export(module, args, folder: Path, *, inputs, outputs, dynamic) -> Path:  # type: ignore[no-untyped-def]
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter is the quick one for N-d graphs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            dynamo=False,
            opset_version=17,
        )
    return _write(folder, buffer.getvalue())


def _write(folder: Path, graph: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(graph)
    return folder
