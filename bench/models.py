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
