"""One error hierarchy for everything that can go wrong with a bundle or its inputs.

Serving maps these to HTTP statuses and the batch job to per-row error messages, so the
messages are written for the person who sent the data: what was expected, what arrived.
"""

from collections.abc import Iterable, Mapping
from typing import Any


def describe_problems(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's validation errors as one line: `key.path: message; other.key: message`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
        for error in errors
    )


class InferenceError(Exception):
    """Base class of every error raised by `inference`."""


class BundleError(InferenceError):
    """A bundle folder is missing, incomplete, corrupt, or does not match its metadata."""


class InvalidInputError(InferenceError, ValueError):
    """Input data does not fit the model's signature (shape, type, names, values)."""


class ProviderUnavailableError(InferenceError):
    """An execution provider (e.g. CUDA) was asked for but cannot be used here."""
