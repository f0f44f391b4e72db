"""Keras optimizers by name, with Keras's parameter names and defaults, on torch.optim.

A step runs in Keras's order: clip gradients (`clipnorm` per tensor, `global_clipnorm`, or
`clipvalue`), apply decoupled weight decay (`w *= 1 - lr * weight_decay`, as Keras does for every
optimizer), then the update. The one numeric difference left is where epsilon sits: Keras adds it
to the uncorrected root (Adam) or inside the root (RMSprop, Adagrad); torch adds it outside.
With epsilon 1e-7 that difference is below float32 noise for ordinary gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from training import vocabulary
from training.names import lookup

Params = Iterable[nn.Parameter]


Build = Callable[[Params, dict[str, Any]], torch.optim.Optimizer]


def _betas(p: dict[str, Any]) -> tuple[float, float]:
    return (p["beta_1"], p["beta_2"])


OPTIMIZERS: dict[str, Build] = {
    "sgd": lambda ps, p: torch.optim.SGD(
        ps,
        lr=p["learning_rate"],
        momentum=p["momentum"],
        nesterov=bool(p["nesterov"]) and p["momentum"] > 0,
    ),
    "adam": lambda ps, p: torch.optim.Adam(
        ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"], amsgrad=p["amsgrad"]
    ),
    "adamw": lambda ps, p: torch.optim.AdamW(
        ps,
        lr=p["learning_rate"],
        betas=_betas(p),
        eps=p["epsilon"],
        amsgrad=p["amsgrad"],
        weight_decay=p["weight_decay"],
    ),
    "rmsprop": lambda ps, p: torch.optim.RMSprop(
        ps,
        lr=p["learning_rate"],
        alpha=p["rho"],
        momentum=p["momentum"],
        eps=p["epsilon"],
        centered=p["centered"],
    ),
    "adagrad": lambda ps, p: torch.optim.Adagrad(
        ps,
        lr=p["learning_rate"],
        initial_accumulator_value=p["initial_accumulator_value"],
        eps=p["epsilon"],
    ),
    "adadelta": lambda ps, p: torch.optim.Adadelta(
        ps, lr=p["learning_rate"], rho=p["rho"], eps=p["epsilon"]
    ),
    "nadam": lambda ps, p: torch.optim.NAdam(
        ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"]
    ),
    "adamax": lambda ps, p: torch.optim.Adamax(
        ps, lr=p["learning_rate"], betas=_betas(p), eps=p["epsilon"]
    ),
}
"""Each Keras optimizer (by the names and defaults of `vocabulary.OPTIMIZERS`) on torch.optim."""


class Optimizer:
    """A torch optimizer that steps the way Keras does (clip, decay, update)."""

    def __init__(self, name: str, params: Mapping[str, Any], model_params: Params):
        self.name = name.lower()
        self.config = vocabulary.optimizer_config(name, params)
        self.parameters = [p for p in model_params if p.requires_grad]
        decay = self.config["weight_decay"]
        # AdamW decays inside torch's own step; every other optimizer gets Keras's decoupled decay.
        self.decoupled_decay = float(decay) if decay and self.name != "adamw" else 0.0
        build_config = {k: v for k, v in self.config.items() if v is not None}
        self.torch = lookup("optimizer", name, OPTIMIZERS)(self.parameters, build_config)

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
