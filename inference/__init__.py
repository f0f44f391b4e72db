"""Load a model bundle and predict with onnxruntime: the runtime shared by serving and batch.

    from inference import load
    model = load("models/side_effects")          # latest version, checksum and signature verified
    model.predict([[70.0], [20.0]]).labels       # ['side_effects', 'no_side_effects']
    model.predict_columns({"age": [70, 20]}).scores

Imports only numpy, onnxruntime and pydantic: never torch, FastAPI or Spark.
"""

from inference.bundle import list_versions, resolve_bundle_dir
from inference.errors import (
    BundleError,
    InferenceError,
    InvalidInputError,
    ProviderUnavailableError,
)
from inference.metadata import BundleMetadata
from inference.model import Model, Prediction, load
from inference.runtime import RuntimeOptions, available_cpus

__all__ = [
    "BundleError",
    "BundleMetadata",
    "InferenceError",
    "InvalidInputError",
    "Model",
    "Prediction",
    "ProviderUnavailableError",
    "RuntimeOptions",
    "available_cpus",
    "list_versions",
    "load",
    "resolve_bundle_dir",
]
