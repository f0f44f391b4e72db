"""The batch package's refusal before any work, shared by the driver-side modules."""

from __future__ import annotations


class ScoringError(ValueError):
    """The job cannot start: a missing input column, a name clash, an unusable column type, a
    model whose rows cannot be scored one per table row. The message names the column and
    what was expected."""
