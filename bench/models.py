"""Models the benchmarks share, made with the project's own export (no downloads)."""

from __future__ import annotations

from pathlib import Path

WIDE_FEATURES = 256


def make_wide_bundle(model_dir: Path) -> Path:
    """A 256 → 1024 → 1024 → 10 softmax classifier with random weights, as a bundle."""
    import torch

    from training import export_module

    torch.manual_seed(0)
    wide = torch.nn.Sequential(
        torch.nn.Linear(WIDE_FEATURES, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )  # fmt: skip
    return export_module(
        wide,
        model_dir,
        feature_names=[f"f{i}" for i in range(WIDE_FEATURES)],
        classes=[f"c{i}" for i in range(10)],
        output_activation="softmax",
    )


IMAGE_SHAPE = (3, 32, 32)


def make_image_model(model_dir: Path) -> Path:
    """A small CNN, [N,3,32,32] → 10 logits, random weights, as a bare `1/model.onnx` (no
    metadata.json: the service reads its signature from the graph)."""
    import torch

    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
    ).eval()  # fmt: skip
    path = model_dir / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    torch.onnx.export(
        cnn,
        (torch.zeros(1, *IMAGE_SHAPE),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path
