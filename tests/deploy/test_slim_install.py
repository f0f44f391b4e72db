"""The image's start command works with only the `serve` extra installed (no torch, no Spark)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.serving.conftest import free_port, wait_ready

pytestmark = pytest.mark.slow


def test_serve_extra_alone_starts_the_service(tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    source = tmp_path / "source"  # setuptools builds inside the source folder: use a copy
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"),
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[serve]"],
        check=True,
        timeout=600,
    )
    installed = subprocess.run(
        [str(python), "-m", "pip", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "torch" not in installed and "pyspark" not in installed
    port = free_port()
    command = [
        str(python),
        "-m",
        "serving",
        "--repo",
        str(REPO / "models"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--grpc-port",  # as the image runs it: grpcio comes with the extra
        str(free_port()),
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_ready(client, timeout=60)
            answer = client.post("/v1/models/side_effects:predict", json={"instances": [70]}).json()
        assert answer["predictions"][0]["label"] == "side_effects"
    finally:
        process.terminate()
        process.wait(30)
    assert sys.executable != str(python)
