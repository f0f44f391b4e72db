"""Fixtures for the service: an in-process app (TestClient) and a real uvicorn process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS, REPO

ClientFactory = Callable[..., TestClient]


def wait_ready(
    client: TestClient | httpx.Client,
    timeout: float = 30,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Until the ready probe answers 200; fails at once when `alive` says the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if client.get("/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the service did not become ready")


@contextmanager
def running_app(*, tune_gc: bool = False, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(**{"repo": MODELS, **settings}), tune_gc=tune_gc)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The service over the committed models, default settings."""
    with running_app() as c:
        yield c


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build apps with particular settings; each is shut down after the test."""
    stack: list[Any] = []

    def make(**settings: Any) -> TestClient:
        context = running_app(**settings)
        stack.append(context)
        return context.__enter__()

    yield make
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A writable copy of the committed model repository."""
    target = tmp_path / "models"
    shutil.copytree(MODELS, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m serving ...` to its end (a start that fails), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


class Server:
    """`python -m serving` in a subprocess on 127.0.0.1, as a user starts it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "serving", "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self) -> Self:
        with httpx.Client(base_url=self.url) as c:
            try:
                wait_ready(c, timeout=60, alive=lambda: self.process.poll() is None)
            except TimeoutError:
                self.stop()
                raise AssertionError(f"server never ready; output:\n{self.output()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def output(self) -> str:
        if self.process.poll() is None:
            self.stop()
        return self.process.stdout.read() if self.process.stdout else ""


class GrpcServer(Server):
    """`python -m serving` with its gRPC endpoint too, on a free port of its own."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.grpc_port = free_port()
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        super().__init__(*args, "--grpc-port", str(self.grpc_port), env=env)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--repo", "models").wait_ready()
    yield s
    s.stop()
