"""The spec's `search:` section: which values of the spec to vary, how, and what to optimise.

Parsed and checked with the rest of the spec (`training.spec.Spec.search`); what the section
asks for is planned and run by `training.tuning`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from training.sections import Section, describe


class Distribution(Section):
    """A random search's draw for one key: exactly one of these."""

    # YAML gives lists; a strict tuple would refuse them.
    uniform: tuple[float, float] | None = Field(default=None, strict=False)
    loguniform: tuple[float, float] | None = Field(default=None, strict=False)
    randint: tuple[StrictInt, StrictInt] | None = Field(default=None, strict=False)
    """Inclusive of both ends."""
    choice: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high is not None and not low_high[0] <= low_high[1]:
            raise ValueError(f"{given[0]}: expected [low, high] with low <= high, got {low_high}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: bounds must be above 0, got {self.loguniform}")
        return self


class SearchSpec(Section):
    """`python -m training <model> --search`: many trainings of this spec with values changed.

    `space` maps dotted spec paths (`compile.optimizer.learning_rate`, `model.layers.0.units`)
    to a list of values (grid or random) or a distribution (random only).
    """

    method: Literal["grid", "random"] = "grid"
    trials: int | None = Field(default=None, gt=0)
    """random: how many draws (default 10); grid: at most this many combinations, picked at
    random with `seed` when the grid is larger (default: all of them)."""
    metric: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    """auto: max for accuracies and AUC, min otherwise (as early stopping decides)."""
    seed: int = 0
    parallelism: int = Field(default=2, gt=0)
    space: dict[str, list[Any] | Distribution] = Field(min_length=1)

    @field_validator("space", mode="before")
    @classmethod
    def _values(cls, space: Any) -> Any:
        """Each key takes a non-empty list or one distribution; said once, not per union arm."""
        if not isinstance(space, dict):
            return space
        checked: dict[Any, Any] = {}
        for key, value in space.items():
            if isinstance(value, list) and value:
                checked[key] = value
            elif isinstance(value, dict):
                try:
                    checked[key] = Distribution.model_validate(value)
                except ValidationError as e:
                    message = describe(e).removeprefix("(top level): ")
                    raise ValueError(f"{key}: {message}") from e
            else:
                raise ValueError(
                    f"{key}: expected a non-empty list of values, or (random search) one of "
                    "{uniform: [a, b]}, {loguniform: [a, b]}, {randint: [a, b]}, "
                    f"{{choice: [...]}}; got {value!r}"
                )
        return checked

    @model_validator(mode="after")
    def _grid_takes_lists(self) -> SearchSpec:
        if self.method == "grid":
            drawn = sorted(k for k, v in self.space.items() if isinstance(v, Distribution))
            if drawn:
                raise ValueError(
                    f"space.{drawn[0]}: a grid takes a list of values; distributions "
                    "(uniform, loguniform, randint, choice) need method: random"
                )
        return self

    @property
    def maximize(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        return "acc" in self.metric or self.metric.endswith("auc")
