"""Fixtures for scoring any tensor: the bare graphs of `tests/byom.py` (made once per session by
`byom_repo`), and onnxruntime run directly on them, the reference every Spark answer must equal."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

Direct = Callable[..., dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def direct(byom_repo: Path) -> Direct:
    """`direct(name, feeds)`: every output of the bare graph `name`, by onnxruntime itself (one
    session per graph), with none of our code between."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name not in sessions:
            sessions[name] = ort.InferenceSession(
                str(byom_repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
        session = sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(feeds)), strict=True))

    return run


@pytest.fixture(scope="session")
def dtypes_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The identity graph over every other tensor type (`tests.byom.dtypes`)."""
    from tests import byom

    repo = tmp_path_factory.mktemp("dtypes")
    byom.dtypes(repo)
    return repo
