"""What several training test modules share: the CLI as a user runs it, and a bundle's accuracy
measured by onnxruntime on its own held-out split."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import inference
from training import data as datasets
from training.spec import load_spec


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m training ARGS` in an empty temporary folder, so that what Spark leaves in its
    working directory (spark-warehouse) stays out of the source tree; `env` is added."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-m", "training", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )


def held_out_accuracy(bundle: Path) -> float:
    """The bundle's accuracy on its own validation split, computed by onnxruntime."""
    spec, spec_file = load_spec(bundle.parent)
    _, validation = datasets.split(
        datasets.load(spec, spec_file), spec.validation_split, spec.data.seed
    )
    predicted = inference.load(bundle).predict(validation.features).class_index
    return float(np.mean(predicted == validation.labels))
