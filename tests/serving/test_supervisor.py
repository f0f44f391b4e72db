"""The workers of `--workers N` stop when their supervisor is killed outright, instead of living
on with the models and the port (serving/process/supervisor.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.process.supervisor import stop_with_supervisor
from tests.conftest import REPO
from tests.serving.conftest import free_port
from tests.serving.test_listener import listening_sockets

COMMANDS = {
    "python -m serving": [sys.executable, "-m", "serving", "--repo", "models"],
    "uvicorn --factory": [
        *(sys.executable, "-m", "uvicorn", "serving.http.app:create_app_from_env", "--factory"),
    ],
}


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def worker_pids(folder: Path, supervisor: subprocess.Popen[str]) -> list[int]:
    """The two workers, once each has written its metrics file (models loaded by then)."""
    deadline = time.monotonic() + 60
    while len(files := list(folder.glob("counter_*.db"))) < 2:
        assert supervisor.poll() is None and time.monotonic() < deadline, "workers never started"
        time.sleep(0.1)
    return [int(p.name.split("_")[1].split("-")[0]) for p in files]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.slow
@pytest.mark.parametrize("started_by", COMMANDS)
def test_workers_drain_and_stop_when_their_supervisor_is_killed(tmp_path: Path, started_by: str):
    folder, port = tmp_path / "metrics", free_port()
    folder.mkdir()
    supervisor = subprocess.Popen(
        [*COMMANDS[started_by], "--port", str(port), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SERVING_METRICS_DIR": str(folder), "SERVING_REPO": "models"},
    )
    workers: list[int] = []
    try:
        workers = worker_pids(folder, supervisor)
        assert all(map(running, workers))
        supervisor.kill()  # no SIGTERM for the supervisor to pass on
        supervisor.wait()
        deadline = time.monotonic() + 30
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(running, workers))
        assert listening_sockets(port) == 0
        output = supervisor.stdout.read() if supervisor.stdout else ""
        assert output.count("this worker stops") == 2, output
    finally:
        supervisor.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_process_not_started_by_multiprocessing_watches_nothing():
    assert stop_with_supervisor() is False
