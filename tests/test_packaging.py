"""The packaging keeps its promises: extras separate, torch pinned, serving paths torch-free."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_torch_is_pinned_exactly_and_only_in_the_train_extra():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == {"train", "serve", "batch", "gpu", "dev", "tracing"}
    torch_lines = [
        (extra, dep) for extra, deps in extras.items() for dep in deps if dep.startswith("torch")
    ]
    assert [(extra, dep.split("#")[0].strip()) for extra, dep in torch_lines] == [
        ("train", "torch==2.13.0")
    ]
    assert not any(dep.startswith("torch") for dep in project["dependencies"])


def test_the_core_needs_only_numpy_onnxruntime_and_validation():
    names = {
        dep.split(">")[0].split("=")[0].split("<")[0]
        for dep in PYPROJECT["project"]["dependencies"]
    }
    assert names == {"numpy", "onnxruntime", "pydantic", "pyyaml"}


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "make run" in readme
    assert ci.strip().endswith("make test")
