"""Keras optimizers by name, with Keras's parameter names and defaults, on torch.optim.

A step runs in Keras's order: clip gradients (`clipnorm` per tensor, `global_clipnorm`, or
`clipvalue`), apply decoupled weight decay (`w *= 1 - lr * weight_decay`, as Keras does for every
optimizer), then the update. The one numeric difference left is where epsilon sits: Keras adds it
to the uncorrected root (Adam) or inside the root (RMSprop, Adagrad); torch adds it outside.
With epsilon 1e-7 that difference is below float32 noise for ordinary gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.names import lookup
from training.sections import wrong_type

Params = Iterable[nn.Parameter]


@dataclass(frozen=True)
class Definition:
    defaults: dict[str, float | bool]
    build: Callable[[Params, dict[str, Any]], torch.optim.Optimizer]


def _betas(p: dict[str, Any]) -> tuple[float, float]:
    return (p["beta_1"], p["beta_2"])


ADAM_DEFAULTS: dict[str, float | bool] = {
    "learning_rate": 0.001,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-7,
}
OPTIMIZERS: dict[str, Definition] = {
    "sgd": Definition(
        {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
        lambda ps, p: torch.optim.SGD(
            ps,
            lr=p["learning_rate"],
            momentum=p["momentum"],
            nesterov=bool(p["nesterov"]) and p["momentum"] > 0,
        ),
    ),
    "adam": Definition(
        {**ADAM_DEFAULTS, "amsgrad": False},
        lambda ps, p: torch.optim.Adam(
            ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"], amsgrad=p["amsgrad"]
        ),
    ),
    "adamw": Definition(
        {**ADAM_DEFAULTS, "amsgrad": False, "weight_decay": 0.004},
        lambda ps, p: torch.optim.AdamW(
            ps,
            lr=p["learning_rate"],
            betas=_betas(p),
            eps=p["epsilon"],
            amsgrad=p["amsgrad"],
            weight_decay=p["weight_decay"],
        ),
    ),
    "rmsprop": Definition(
        {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
        lambda ps, p: torch.optim.RMSprop(
            ps,
            lr=p["learning_rate"],
            alpha=p["rho"],
            momentum=p["momentum"],
            eps=p["epsilon"],
            centered=p["centered"],
        ),
    ),
    "adagrad": Definition(
        {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
        lambda ps, p: torch.optim.Adagrad(
            ps,
            lr=p["learning_rate"],
            initial_accumulator_value=p["initial_accumulator_value"],
            eps=p["epsilon"],
        ),
    ),
    "adadelta": Definition(
        {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7},
        lambda ps, p: torch.optim.Adadelta(
            ps, lr=p["learning_rate"], rho=p["rho"], eps=p["epsilon"]
        ),
    ),
    "nadam": Definition(
        dict(ADAM_DEFAULTS),
        lambda ps, p: torch.optim.NAdam(
            ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"]
        ),
    ),
    "adamax": Definition(
        dict(ADAM_DEFAULTS),
        lambda ps, p: torch.optim.Adamax(
            ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"]
        ),
    ),
}

COMMON: dict[str, float | None] = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
}
ALIASES = {"lr": "learning_rate"}
BOOLEAN = frozenset({"nesterov", "amsgrad", "centered"})


def normalize(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Keras's parameters for optimizer `name`: aliases resolved, checked, defaults filled in."""
    definition = lookup("optimizer", name, OPTIMIZERS)
    allowed = {**COMMON, **definition.defaults}
    result: dict[str, Any] = dict(allowed)
    for key, value in params.items():
        key = ALIASES.get(key, key)
        if key not in allowed:
            raise ValueError(
                f"unknown parameter {key!r} for optimizer {name!r}; known: {', '.join(allowed)}"
            )
        if value is None and key not in COMMON:
            raise ValueError(f"{key} {wrong_type('a number', value)}")
        if key in BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"{key} {wrong_type('true or false', value)}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key} {wrong_type('a number', value)}")
        elif value is not None and not math.isfinite(value):
            raise ValueError(f"{key} {wrong_type('a finite number', value)}")
        elif value is not None and value < 0:
            raise ValueError(f"{key} must not be negative, got {value!r}")
        result[key] = value
    if sum(result[k] is not None for k in ("clipnorm", "clipvalue", "global_clipnorm")) > 1:
        raise ValueError("set at most one of clipnorm, clipvalue and global_clipnorm")
    return result


class Optimizer:
    """A torch optimizer that steps the way Keras does (clip, decay, update)."""

    def __init__(self, name: str, params: Mapping[str, Any], model_params: Params):
        self.name = name.lower()
        self.config = normalize(name, params)
        self.parameters = [p for p in model_params if p.requires_grad]
        decay = self.config["weight_decay"]
        # AdamW decays inside torch's own step; every other optimizer gets Keras's decoupled decay.
        self.decoupled_decay = float(decay) if decay and self.name != "adamw" else 0.0
        build_config = {k: v for k, v in self.config.items() if v is not None}
        self.torch = lookup("optimizer", name, OPTIMIZERS).build(self.parameters, build_config)

    def zero_grad(self) -> None:
        self.torch.zero_grad(set_to_none=True)

    def step(self) -> None:
        c = self.config
        if c["clipnorm"] is not None:
            for p in self.parameters:
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], c["clipnorm"])
        elif c["global_clipnorm"] is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, c["global_clipnorm"])
        elif c["clipvalue"] is not None:
            torch.nn.utils.clip_grad_value_(self.parameters, c["clipvalue"])
        if self.decoupled_decay:
            with torch.no_grad():
                for p in self.parameters:
                    p.mul_(1.0 - c["learning_rate"] * self.decoupled_decay)
        self.torch.step()
