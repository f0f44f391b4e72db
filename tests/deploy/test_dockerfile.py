"""The Dockerfile, checked offline: hadolint, structure, and agreement with the README."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def instructions() -> list[dict[str, str]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    return parser.structure  # type: ignore[no-any-return]


def stages(instructions: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    result: dict[str, list[dict[str, str]]] = {}
    current = ""
    for i in instructions:
        if i["instruction"] == "FROM":
            parts = i["value"].split()
            current = parts[-1] if "AS" in [p.upper() for p in parts] else parts[0]
            result[current] = []
        elif current:
            result[current].append(i)
    return result


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets(instructions: list[dict[str, str]]):
    assert {"build", "serve-base", "serve-gpu", "batch", "train", "serve"} <= set(
        stages(instructions)
    )
    assert instructions[-1]["instruction"] == "FROM"  # the last stage, the default target: serve
    assert instructions[-1]["value"] == "serve-base AS serve"


@pytest.mark.parametrize("stage", ["serve-base", "serve-gpu", "batch", "train"])
def test_runs_as_a_non_root_user(instructions: list[dict[str, str]], stage: str):
    users = [i["value"] for i in stages(instructions)[stage] if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_service_command_is_the_readmes(instructions: list[dict[str, str]]):
    serve = stages(instructions)["serve-base"]
    command = json.loads(next(i["value"] for i in serve if i["instruction"] == "CMD"))  # exec form
    readme_command = shlex.split("python -m serving --repo models")
    assert "python -m serving --repo models" in (REPO / "README.md").read_text()
    assert command[: len(readme_command)] == readme_command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    exposed = next(i["value"] for i in serve if i["instruction"] == "EXPOSE")
    assert command[command.index("--port") + 1] == exposed == "8080"


def test_healthcheck_and_environment(instructions: list[dict[str, str]]):
    serve = stages(instructions)["serve-base"]
    health = next(i["value"] for i in serve if i["instruction"] == "HEALTHCHECK")
    assert "/v2/health/live" in health
    env = " ".join(i["value"] for i in serve if i["instruction"] == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


def test_dependencies_install_before_the_code(instructions: list[dict[str, str]]):
    serve = [i for i in stages(instructions)["serve-base"] if i["instruction"] in ("COPY", "RUN")]
    first_pip = next(
        n for n, i in enumerate(serve) if i["instruction"] == "RUN" and "pip install" in i["value"]
    )
    first_code = next(
        n for n, i in enumerate(serve) if i["instruction"] == "COPY" and "/wheels/" in i["value"]
    )
    assert first_pip < first_code
    assert extras_installed(serve[first_pip]["value"]) == ["serve", "tracing"]


def extras_installed(run: str) -> list[str]:
    """The arguments given to docker/requirements.py in a RUN line, up to the redirection."""
    words = shlex.split(run)
    start = words.index("requirements.py") + 1
    return words[start : words.index(">")]


@pytest.mark.parametrize(
    ("stage", "present", "absent"),
    [
        (
            "serve-base",
            {"fastapi", "onnxruntime", "numpy", "opentelemetry-sdk"},
            {"torch", "pyspark", "onnxruntime-gpu"},
        ),
        (
            "serve-gpu",
            {"fastapi", "onnxruntime-gpu", "opentelemetry-sdk"},
            {"onnxruntime", "torch", "pyspark"},
        ),
        ("batch", {"pyspark", "onnxruntime", "pandas"}, {"torch", "fastapi"}),
        ("train", {"torch", "onnx", "onnxruntime"}, {"pyspark", "fastapi"}),
    ],
)
def test_each_image_installs_exactly_its_extras(
    instructions: list[dict[str, str]], stage: str, present: set[str], absent: set[str]
):
    run = next(
        i["value"]
        for i in stages(instructions)[stage]
        if "requirements.py" in i["value"] and i["instruction"] == "RUN"
    )
    command = [
        sys.executable,
        str(REPO / "docker" / "requirements.py"),
        *extras_installed(run),
        "--pyproject",
        str(REPO / "pyproject.toml"),
    ]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    names = {re.match(r"[A-Za-z0-9._-]+", line).group(0).lower() for line in lines}  # type: ignore[union-attr]
    assert present <= names, present - names
    assert not names & absent, names & absent


def test_every_copy_source_exists(instructions: list[dict[str, str]]):
    for i in instructions:
        if i["instruction"] != "COPY" or "--from=" in i["value"]:
            continue
        sources = [p for p in i["value"].split()[:-1] if not p.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}"


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", "tests", ".git", "bench"):
        assert path in ignored
