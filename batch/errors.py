"""The batch package's refusals before any work, shared by the driver-side modules (no pyspark
here, so the CLI can refuse before Spark starts)."""

from __future__ import annotations


class ScoringError(ValueError):
    """The job cannot start: a missing input column, a name clash, an unusable column type, a
    model whose rows cannot be scored one per table row. The message names the column and
    what was expected."""


class JobError(Exception):
    """The job cannot run as asked (arguments, input, output); the message says why."""

    exit_code = 2


class BadRowsError(JobError):
    """`--fail-on-bad-rows` found rows that could not be scored."""

    exit_code = 1
