"""Train Keras-style specs with PyTorch and export them, or any `nn.Module`, as ONNX bundles.

python -m training models/side_effects       # spec → training → models/side_effects/<n>/

from training import export_module, Scaler   # your own module → the same bundle format
"""

from training.export import ExportError
from training.module_export import export_module
from training.preprocessing import Scaler
from training.spec import SpecError, load_spec
from training.train import TrainResult, train

__all__ = [
    "ExportError",
    "Scaler",
    "SpecError",
    "TrainResult",
    "export_module",
    "load_spec",
    "train",
]
