"""Keras names → implementations, with one lookup that lists the known names on a miss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the ones that are."""


def lookup(kind: str, name: str, table: Mapping[str, T]) -> T:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in table:
        raise UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[key]
