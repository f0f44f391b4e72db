"""Logs as an operator reads them: one configuration for the service, uvicorn and every worker
process, JSON when asked, the access log only when asked."""

from __future__ import annotations

import json
import logging
import signal

import httpx
import pytest

from serving.http.app import create_app_from_env
from tests.conftest import MODELS
from tests.serving.conftest import Server


def run_and_stop(*args: str, env: dict[str, str] | None = None) -> str:
    server = Server("--repo", "models", *args, env=env).wait_ready()
    try:
        with httpx.Client(base_url=server.url) as client:
            statuses = [
                client.post("/v1/models/side_effects:predict", json={"instances": [70]}).status_code
                for _ in range(4)
            ]
    finally:
        status = server.stop()
    assert statuses == [200] * 4
    assert status in (0, -signal.SIGTERM)
    return server.output()


@pytest.mark.slow
def test_every_worker_process_logs_as_configured():
    """Workers are processes of their own (`create_app_from_env`): they must log in JSON too,
    their INFO lines included, and keep the access log off."""
    lines = [json.loads(line) for line in run_and_stop("--workers", "2", "--log-json").splitlines()]
    messages = [line["message"] for line in lines]
    loaded = [m for m in messages if m.startswith("loaded model side_effects")]
    assert len(loaded) == 2, messages  # one per worker
    assert sum(m.startswith("garbage collector settled") for m in messages) == 2, messages
    assert {line["model"] for line in lines if "model" in line} == {
        "digits",
        "iris",
        "side_effects",
    }
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]


def test_the_access_log_is_off_unless_asked_for():
    assert "uvicorn.access" not in run_and_stop()
    output = run_and_stop(env={"SERVING_ACCESS_LOG": "true"})
    access = [line for line in output.splitlines() if "uvicorn.access" in line and "POST" in line]
    assert len(access) == 4 and all(line.endswith('HTTP/1.1" 200') for line in access), output


def test_the_uvicorn_factory_leaves_logging_to_uvicorn(monkeypatch: pytest.MonkeyPatch):
    """`uvicorn serving.http.app:create_app_from_env --factory`: the user's `--log-config` and
    `--log-level` hold (only `python -m serving`'s own workers set their logging)."""
    monkeypatch.setenv("SERVING_REPO", str(MODELS))
    monkeypatch.setenv("SERVING_LOG_JSON", "true")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    create_app_from_env()
    assert (root.handlers, root.level) == (handlers, level)
