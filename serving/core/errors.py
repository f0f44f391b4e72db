"""The service's errors, each with the HTTP status it answers (gRPC maps the same classes to
its status codes: `serving/grpc/service.py`)."""

from __future__ import annotations


class ServingError(Exception):
    status = 500


class BadRequest(ServingError):
    status = 400


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class ModelNotReady(ServingError):
    status = 503


class InferenceTimeout(ServingError):
    status = 504


class NonFiniteOutput(ServingError):
    """A model answered NaN or infinity for inputs it accepted: JSON has no such numbers, and
    a score that is not a number names no class; refused alike in JSON and binary answers."""

    status = 500
