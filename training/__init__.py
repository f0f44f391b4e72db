"""Train Keras-style specs with PyTorch and export them, or any `nn.Module`, as ONNX bundles.

python -m training models/side_effects       # spec → training → models/side_effects/<n>/
python -m training models/side_effects --spark            # DDP across Spark tasks
python -m training models/side_effects --search [--spark] # the spec's hyperparameter search

from training import export_module, Scaler   # your own module → the same bundle format

The names below load on first use (PEP 562), so that checking a spec (`training.spec`) does not
import torch: a wrong spec is a one-line error in well under two seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from training.errors import DistributedError, ExportError, SearchError
from training.spec import SpecError, load_spec

if TYPE_CHECKING:
    from training.distributed import train_distributed
    from training.module_export import export_module
    from training.preprocessing import Scaler
    from training.trainer import TrainResult, train
    from training.tuning import search

_LAZY = {
    "train_distributed": "training.distributed",
    "export_module": "training.module_export",
    "Scaler": "training.preprocessing",
    "TrainResult": "training.trainer",
    "train": "training.trainer",
    "search": "training.tuning",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "DistributedError",
    "ExportError",
    "Scaler",
    "SearchError",
    "SpecError",
    "TrainResult",
    "export_module",
    "load_spec",
    "search",
    "train",
    "train_distributed",
]
