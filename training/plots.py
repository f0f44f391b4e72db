"""The loss and metric curves of a training run, saved next to the bundle as `training.png`."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_history(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    """One panel per quantity (loss, each metric), training and validation curves together."""
    names = [k for k in history if not k.startswith("val_")]
    figure = Figure(figsize=(4.5 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(figure)  # a figure without pyplot: no global state, safe in any thread
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        epochs = range(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker=".", label="training")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker=".", label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)
