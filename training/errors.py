"""The training package's failures, importable without torch.

The CLI catches these around work that loads torch only when a model actually trains; keeping
them here lets it check specs, paths and options first, in well under two seconds. `SpecError`
(a wrong spec, data or option) lives with the spec in `training.spec`.
"""


class ExportError(Exception):
    """The model could not be exported, or the export does not reproduce PyTorch."""


class DivergedError(Exception):
    """The loss stopped being a number: the weights are garbage, and no bundle is written."""


class DistributedError(Exception):
    """The distributed run failed on the workers."""


class SearchError(Exception):
    """No trial succeeded: nothing to export."""
