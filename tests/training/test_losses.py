"""Each Keras loss at a small example computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from training import losses
from training.names import UnknownNameError

CASES = [
    # per sample: (0² + 2²)/2 = 2 and (3² + 0²)/2 = 4.5; batch mean 3.25
    ("mean_squared_error", [[1, 2], [3, 4]], [[1, 4], [0, 4]], 3.25),
    # (0 + 2)/2 = 1 and (3 + 0)/2 = 1.5; mean 1.25
    ("mean_absolute_error", [[1, 2], [3, 4]], [[1, 4], [0, 4]], 1.25),
    # 100 · (|2-1|/2 + |4-5|/4)/2 = 100 · 0.375
    ("mean_absolute_percentage_error", [[2, 4]], [[1, 5]], 37.5),
    # (log(e - 1 + 1) - log(0 + 1))² = 1 (y_true is clipped to 1e-7: 0.9999998)
    ("mean_squared_logarithmic_error", [[0]], [[math.e - 1]], (1 - 1e-7) ** 2),
    # labels 0/1 → -1/1: max(1 + 0.3, 0) = 1.3 and max(1 - 0.6, 0) = 0.4; mean 0.85
    ("hinge", [[0, 1]], [[0.3, 0.6]], 0.85),
    # (1.3² + 0.4²)/2 = (1.69 + 0.16)/2
    ("squared_hinge", [[0, 1]], [[0.3, 0.6]], 0.925),
    # pos = 0.5, neg = max(0.2, 0, 0.3) = 0.3: max(0.3 - 0.5 + 1, 0) = 0.8
    ("categorical_hinge", [[0, 1, 0]], [[0.2, 0.5, 0.3]], 0.8),
    # log(cosh(1))
    ("log_cosh", [[0]], [[1]], math.log(math.cosh(1))),
    # |error| = 2 > delta 1: 0.5 · 1² + 1 · (2 - 1)
    ("huber", [[0]], [[2]], 1.5),
    # scores renormalised: [0.2, 0.6] → [0.25, 0.75]; -log(0.75)
    ("categorical_crossentropy", [[0, 1]], [[0.2, 0.6]], -math.log(0.75)),
    ("sparse_categorical_crossentropy", [1], [[0.2, 0.6]], -math.log(0.75)),
    # a zero score is clipped to 1e-7: -log(1e-7)
    ("sparse_categorical_crossentropy", [1], [[1.0, 0.0]], -math.log(1e-7)),
    # -(log 0.8 + log 0.6)/2
    ("binary_crossentropy", [[1, 0]], [[0.8, 0.4]], -(math.log(0.8) + math.log(0.6)) / 2),
    # 0.5·log(0.5/0.25) + 0.5·log(0.5/0.75)
    ("kl_divergence", [[0.5, 0.5]], [[0.25, 0.75]], 0.5 * math.log(2) + 0.5 * math.log(2 / 3)),
    # 2 - 1·log(2 + 1e-7)
    ("poisson", [[1]], [[2]], 2 - math.log(2 + 1e-7)),
    # the negative cosine of 45°
    ("cosine_similarity", [[1, 0]], [[1, 1]], -1 / math.sqrt(2)),
    ("cosine_proximity", [[1, 0]], [[1, 1]], -1 / math.sqrt(2)),
    # a zero vector stays zero: loss 0, not NaN
    ("cosine_similarity", [[0, 0]], [[1, 1]], 0.0),
]


@pytest.mark.parametrize(("name", "y_true", "y_pred", "expected"), CASES)
def test_loss_matches_hand_computation(name: str, y_true: list, y_pred: list, expected: float):
    value = losses.get(name)(torch.tensor(y_true), torch.tensor(y_pred, dtype=torch.float32))
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("mse", "mean_squared_error"),
        ("mae", "mean_absolute_error"),
        ("mape", "mean_absolute_percentage_error"),
        ("msle", "mean_squared_logarithmic_error"),
        ("logcosh", "log_cosh"),
        ("kld", "kl_divergence"),
        ("kullback_leibler_divergence", "kl_divergence"),
    ],
)
def test_aliases_give_the_same_loss(alias: str, name: str):
    y_true, y_pred = torch.tensor([[0.2, 0.8]]), torch.tensor([[0.3, 0.5]])
    assert losses.get(alias)(y_true, y_pred) == losses.get(name)(y_true, y_pred)


def test_targets_of_rank_one_are_expanded_like_keras():
    # (n,) targets against (n, 1) outputs compare element by element, not by broadcasting
    value = losses.get("mse")(torch.tensor([1.0, 3.0]), torch.tensor([[1.0], [1.0]]))
    assert value.item() == pytest.approx(2.0)


def test_hinge_keeps_labels_that_are_already_signed():
    # labels -1/1 are used as they are: max(1 - (-1)(-0.5), 0) = 0.5
    assert losses.get("hinge")(torch.tensor([[-1.0]]), torch.tensor([[-0.5]])).item() == 0.5


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'mean_sqared_error'; known: .*mse"):
        losses.get("mean_sqared_error")
