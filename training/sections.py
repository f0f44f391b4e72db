"""What every spec section shares: unknown keys are errors that list the allowed ones, and
pydantic's errors are worded `key.path: message (got value)`.

Its own module so that the spec (`training.spec`) and its search section
(`training.search_spec`) can both build on it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from inference.inputs import is_number


class Section(BaseModel):
    """A spec section: unknown keys are errors that list the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = {f.alias or name for name, f in cls.model_fields.items()}
            unknown = sorted(str(k) for k in data if k not in allowed and k not in cls.model_fields)
            if unknown:
                raise ValueError(
                    f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
                )
        return data


def describe(error: ValidationError) -> str:
    """Pydantic's errors as `key.path: message (got value)`, one per problem, joined."""
    parts = []
    for err in error.errors():
        path = ".".join(_path(err["loc"])) or "(top level)"
        message = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            known = str(ctx.get("expected_tags", "")).replace("'", "")
            message = f"unknown layer type {ctx.get('tag')!r}; known: {known}"
        elif err["type"] in EXPECTED:
            message = wrong_type(EXPECTED[err["type"]], err["input"])
        elif err["type"] not in ("value_error", "missing"):
            message += f" (got {err['input']!r})"
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


EXPECTED = {
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list, e.g. [a, b]",
    "dict_type": "a mapping, e.g. {key: value}",
}
"""What a key must hold, for pydantic's strict type errors."""


def wrong_type(expected: str, value: Any) -> str:
    """`must be <expected>, got <the value as YAML wrote it> (<what it is; the fix>)`."""
    if isinstance(value, bool):
        got = f"{str(value).lower()} (a boolean)"
    elif value is None:
        got = "an empty value (null)"
    elif isinstance(value, float) and expected == "a whole number":
        got = f"{value!r} (a decimal number; write it without a fraction or exponent)"
    elif isinstance(value, str):
        got = f"{value!r} (text)"
        if expected in ("a whole number", "a number", "a finite number") and is_number(value):
            got = f"{value!r} (text, in quotes; write it without the quotes)"
        elif expected == "true or false" and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            got = f"{value!r} (text in YAML 1.2; write true or false)"
    elif isinstance(value, (dict, list)):
        got = f"a {'mapping' if isinstance(value, dict) else 'list'}"
    else:
        got = repr(value)
    return f"must be {expected}, got {got}"


def _path(loc: tuple[int | str, ...]) -> list[str]:
    """The key path without the layer-type tag pydantic inserts after a list index."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        follows_index = i > 0 and isinstance(loc[i - 1], int)
        if not (follows_index and part in LAYER_TYPES):
            parts.append(str(part))
    return parts


LAYER_TYPES = (
    "dense",
    "activation",
    "dropout",
    "batch_normalization",
    "conv1d",
    "conv2d",
    "max_pooling1d",
    "max_pooling2d",
    "average_pooling1d",
    "average_pooling2d",
    "global_average_pooling1d",
    "global_average_pooling2d",
    "global_max_pooling1d",
    "global_max_pooling2d",
    "flatten",
    "reshape",
    "embedding",
    "simple_rnn",
    "lstm",
    "gru",
)
"""The `type` tags of `training.spec.LayerSpec` (a test keeps the two equal)."""
