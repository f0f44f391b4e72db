"""The torch-free names a spec is checked against are exactly the names the PyTorch side
implements: a name added to one side only would pass the spec and fail in training, or the
reverse."""

from __future__ import annotations

import pytest

from training import activations, losses, metrics, optimizers, vocabulary
from training.names import UnknownNameError


def test_activation_names_match():
    assert set(activations.ACTIVATIONS) == vocabulary.ACTIVATIONS


def test_loss_names_and_canonical_names_match():
    assert set(losses.PER_SAMPLE) == set(vocabulary.LOSSES)
    for name, long_name in vocabulary.LOSSES.items():
        assert losses.PER_SAMPLE[name] is losses.PER_SAMPLE[long_name]
        assert next(k for k, v in losses.PER_SAMPLE.items() if v is losses.PER_SAMPLE[name]) == (
            long_name
        )


def test_metric_names_match():
    assert set(metrics.METRICS) == vocabulary.METRICS


def test_optimizer_names_match_and_every_default_builds():
    assert set(optimizers.OPTIMIZERS) == set(vocabulary.OPTIMIZERS)
    import torch

    weights = [torch.nn.Parameter(torch.zeros(2))]
    for name in vocabulary.OPTIMIZERS:
        built = optimizers.Optimizer(name, {}, weights)
        assert built.config["learning_rate"] == vocabulary.OPTIMIZERS[name]["learning_rate"]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'mse2'; known: .*mean_squared_error"):
        vocabulary.canonical_loss("mse2")
    with pytest.raises(UnknownNameError, match=r"unknown activation 'rleu'; known: .*relu"):
        vocabulary.check_activation("rleu")
    assert vocabulary.check_metric("ACC") == "ACC"
    assert vocabulary.canonical_loss(" MSE ") == "mean_squared_error"
