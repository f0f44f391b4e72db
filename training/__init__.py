"""Train Keras-style specs with PyTorch and export them, or any `nn.Module`, as ONNX bundles.

python -m training models/side_effects       # spec → training → models/side_effects/<n>/
python -m training models/side_effects --spark            # DDP across Spark tasks
python -m training models/side_effects --search [--spark] # the spec's hyperparameter search

from training import export_module, Scaler   # your own module → the same bundle format
"""

from training.distributed import DistributedError, train_distributed
from training.export import ExportError
from training.module_export import export_module
from training.preprocessing import Scaler
from training.search import SearchError, search
from training.spec import SpecError, load_spec
from training.train import TrainResult, train

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
