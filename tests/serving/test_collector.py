"""The garbage collector set for serving (`serving/ops/collector.py`): frozen once the models are
loaded, settled again after each repository change, given back as found when the app stops,
and left alone where the app does not own its process."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from serving.http.app import create_app
from serving.ops.collector import YOUNG_THRESHOLD
from serving.ops.settings import Settings
from tests.conftest import MODELS
from tests.serving.conftest import Server, running_app, wait_ready


class Cycle:
    """Garbage that only the cyclic collector can free."""

    def __init__(self) -> None:
        self.me = self


def test_a_loaded_server_is_frozen_and_gives_the_collector_back_when_it_stops():
    before = gc.get_threshold()
    with running_app(tune_gc=True):
        assert gc.get_freeze_count() > 10_000  # what the process holds: a freeze happened
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_garbage_frozen_with_the_server_is_collected_at_the_next_repository_change(
    tmp_path: Path,
):
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "iris", repo / "iris")
    cycle: Any = Cycle()
    ref = weakref.ref(cycle)
    with running_app(repo=repo, tune_gc=True) as client:
        del cycle  # garbage now, but frozen with the server's state at startup
        gc.collect()
        assert ref() is not None  # collections skip what is frozen
        assert client.post("/v2/repository/models/iris/unload").status_code == 200
        assert ref() is None
        assert client.post("/v2/repository/models/iris/load").status_code == 200
        body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
        assert client.post("/v1/models/iris:predict", json=body).status_code == 200


def test_a_restarted_app_is_settled_again():
    """The lifespan may run more than once; the models stay loaded, so the second start has
    no load to settle after, and must still freeze what stopping the first one let go."""
    app = create_app(Settings(repo=MODELS), tune_gc=True)
    for _ in range(2):
        with TestClient(app) as client:
            wait_ready(client)
            assert gc.get_freeze_count() > 10_000
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() == 0


def test_an_unknown_model_in_the_repository_api_settles_nothing(tmp_path: Path):
    """A 404 from the repository API changes no models: no full collection for it (each
    costs tens of milliseconds of a held event loop)."""
    repo = tmp_path / "models"
    shutil.copytree(MODELS / "iris", repo / "iris")
    with running_app(repo=repo, tune_gc=True) as client:
        cycle: Any = Cycle()
        ref = weakref.ref(cycle)
        gc.collect()
        gc.freeze()  # with the server's state: only a settle would collect it now
        del cycle
        for action in ("load", "unload"):
            assert client.post(f"/v2/repository/models/nope/{action}").status_code == 404
        assert ref() is not None
        assert client.post("/v2/repository/models/iris/unload").status_code == 200
        assert ref() is None


def test_an_app_that_does_not_own_its_process_leaves_the_collector_alone():
    before = gc.get_threshold()
    with running_app(tune_gc=False):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before


def test_python_m_serving_settles_the_collector_once_its_models_are_loaded():
    server = Server("--repo", "models").wait_ready()
    try:
        with httpx.Client(base_url=server.url) as client:
            answer = client.post("/v1/models/side_effects:predict", json={"instances": [70]})
            assert answer.status_code == 200
    finally:
        output = server.output()
    assert output.count("garbage collector settled") == 1, output
