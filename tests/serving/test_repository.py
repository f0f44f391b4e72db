"""Version policies, failed models, and load/unload without a restart."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from inference.yaml_files import MAX_VALUES
from tests.inference.test_yaml_files import BOMB
from tests.serving.conftest import ClientFactory


def add_versions(model_dir: Path, count: int) -> None:
    """Copy version 1 to 2..count (as further training runs would add them)."""
    for version in range(2, count + 1):
        target = model_dir / str(version)
        shutil.copytree(model_dir / "1", target)
        meta = json.loads((target / "metadata.json").read_text())
        meta["version"] = version
        (target / "metadata.json").write_text(json.dumps(meta))


def set_serving(model_dir: Path, section: object) -> None:
    spec = yaml.safe_load((model_dir / "model.yaml").read_text())
    spec["serving"] = section
    (model_dir / "model.yaml").write_text(yaml.safe_dump(spec))


def versions_of(client: TestClient, name: str) -> list[str]:
    return client.get(f"/v1/models/{name}").json()["versions"]


def test_latest_version_by_default_and_every_version_addressable(
    make_client: ClientFactory, repo_copy: Path
):
    add_versions(repo_copy / "iris", 3)
    set_serving(repo_copy / "iris", {"version_policy": "all"})
    client = make_client(repo=repo_copy)
    assert versions_of(client, "iris") == ["1", "2", "3"]
    assert versions_of(client, "side_effects") == ["1"]
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    assert client.post("/v1/models/iris:predict", json=body).json()["model_version"] == "3"
    assert (
        client.post("/v1/models/iris/versions/2:predict", json=body).json()["model_version"] == "2"
    )


def test_version_policies(make_client: ClientFactory, repo_copy: Path):
    add_versions(repo_copy / "iris", 4)
    set_serving(repo_copy / "iris", {"version_policy": {"latest": 2}})
    add_versions(repo_copy / "side_effects", 3)
    set_serving(repo_copy / "side_effects", {"version_policy": {"specific": [1, 3]}})
    client = make_client(repo=repo_copy)
    assert versions_of(client, "iris") == ["3", "4"]
    assert versions_of(client, "side_effects") == ["1", "3"]
    assert client.get("/v2/models/iris/versions/1").status_code == 404


def test_a_failed_model_is_reported_and_the_others_serve(
    make_client: ClientFactory, repo_copy: Path
):
    onnx_file = repo_copy / "iris" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])
    client = make_client(repo=repo_copy)
    assert client.get("/v2/health/ready").status_code == 200
    ready = client.get("/v2/models/iris/ready")
    assert ready.status_code == 503
    assert "sha256" in ready.json()["error"]
    status = client.get("/v1/models/iris").json()
    assert status["ready"] is False and "does not match" in status["reason"]
    assert (
        client.post("/v1/models/side_effects:predict", json={"instances": [70]}).status_code == 200
    )
    index = client.post("/v2/repository/index").json()
    iris = next(m for m in index if m["name"] == "iris")
    assert {"name": "iris", "version": "1", "state": "UNAVAILABLE"}.items() <= iris.items()


def test_an_invalid_serving_section_is_reported(make_client: ClientFactory, repo_copy: Path):
    set_serving(repo_copy / "iris", {"version_policy": {"newest": 1}})
    client = make_client(repo=repo_copy)
    response = client.get("/v2/models/iris/ready")
    assert response.status_code == 503
    assert "invalid serving section" in response.json()["error"]


def test_reload_picks_up_a_new_version_without_restart(make_client: ClientFactory, repo_copy: Path):
    client = make_client(repo=repo_copy)
    assert versions_of(client, "iris") == ["1"]
    add_versions(repo_copy / "iris", 2)
    assert client.post("/v2/repository/models/iris/load", json={}).json() == {
        "name": "iris",
        "load": True,
    }
    assert versions_of(client, "iris") == ["2"]
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    assert client.post("/v1/models/iris:predict", json=body).json()["model_version"] == "2"


def test_unload_then_load(make_client: ClientFactory, repo_copy: Path):
    client = make_client(repo=repo_copy)
    assert client.post("/v2/repository/models/iris/unload").json() == {
        "name": "iris",
        "unload": True,
    }
    response = client.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 503
    assert "unloaded" in response.json()["error"]
    assert client.get("/v2/models/iris/ready").status_code == 503
    assert client.post("/v2/repository/models/iris/load").status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 200


def test_loading_a_model_that_is_not_there(make_client: ClientFactory, repo_copy: Path):
    client = make_client(repo=repo_copy)
    response = client.post("/v2/repository/models/mnist/load")
    assert response.status_code == 404
    assert "not in the repository" in response.json()["error"]
    assert client.post("/v2/repository/models/mnist/unload").status_code == 404
    response = client.post("/v2/repository/models/iris/load", json={"parameters": {"config": "{}"}})
    assert response.status_code == 400


def test_a_load_that_fails_says_why(make_client: ClientFactory, repo_copy: Path):
    client = make_client(repo=repo_copy)
    (repo_copy / "iris" / "1" / "metadata.json").write_text('{"task": "ranking"}')
    response = client.post("/v2/repository/models/iris/load")
    assert response.status_code == 400
    assert (
        "failed to load" in response.json()["error"]
        and "invalid bundle metadata" in response.json()["error"]
    )


def test_a_failed_reload_keeps_the_loaded_version_serving(
    make_client: ClientFactory, repo_copy: Path
):
    client = make_client(repo=repo_copy)
    (repo_copy / "iris" / "1" / "metadata.json").write_text(
        '{"task": "ranking"}'
    )  # a broken bundle on disk
    assert client.post("/v2/repository/models/iris/load").status_code == 400
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    assert (
        client.post("/v1/models/iris:predict", json=body).json()["predictions"][0]["label"]
        == "setosa"
    )


def test_any_load_failure_is_recorded_and_the_server_gets_ready(
    make_client: ClientFactory, repo_copy: Path
):
    (repo_copy / "iris" / "1" / "metadata.json").write_bytes(b"\xff\xfe not utf-8")
    client = make_client(repo=repo_copy, models=["iris", "side_effects", "no_such_model"])
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 503
    assert "not in the repository" in client.get("/v2/models/no_such_model/ready").json()["error"]
    assert (
        client.post("/v1/models/side_effects:predict", json={"instances": [70]}).status_code == 200
    )


def test_index_lists_every_version(client: TestClient):
    index = client.post("/v2/repository/index").json()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("digits", "1", "READY"),
        ("iris", "1", "READY"),
        ("side_effects", "1", "READY"),
    ]
    assert len(client.post("/v2/repository/index", json={"ready": True}).json()) == 3


def test_a_name_the_file_system_refuses_is_an_unknown_model(client: TestClient):
    answer = client.post(f"/v2/repository/models/{'x' * 300}/load")
    assert answer.status_code == 404
    assert "not in the repository" in answer.json()["error"]


def test_a_bomb_in_one_serving_section_leaves_the_other_models_serving(
    make_client: ClientFactory, repo_copy: Path
):
    spec = repo_copy / "iris" / "model.yaml"
    spec.write_text(spec.read_text() + "\nserving:\n  " + BOMB.replace("\n", "\n  "))
    started = time.perf_counter()
    client = make_client(repo=repo_copy)
    assert time.perf_counter() - started < 30
    index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
    assert index["iris"]["state"] == "UNAVAILABLE"
    assert index["iris"]["reason"].startswith(f"{spec}: expands to more than {MAX_VALUES:,} values")
    assert client.get("/v2/models/side_effects/ready").status_code == 200
