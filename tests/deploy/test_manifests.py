"""Kubernetes manifests: valid against the real schemas, and consistent with the real service."""

from __future__ import annotations

import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from fastapi.testclient import TestClient
from kubeflow_spark_api.models.spark_v1beta2_spark_application import (
    SparkV1beta2SparkApplication as SparkApplication,
)

from batch.__main__ import parse_args as batch_args
from serving.http.app import create_app
from serving.ops.settings import Settings
from tests.conftest import MODELS, REPO
from training.__main__ import parse_args as training_args

K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.32"
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "overlays/model-volume", "training", "batch"]


def render(kustomization: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render k8s/ (it ships with this machine)"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_manifest_is_valid_in_strict_mode(kustomization: str):
    for doc in render(kustomization):
        if doc["kind"] == "SparkApplication":
            continue  # a CRD: checked below with the spark-operator's own API models
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_typo():
    deployment = find(render("overlays/cpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return find(render("overlays/cpu"), "Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_probes_hit_real_endpoints_of_the_service(container: dict[str, Any]):
    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/v2/health/ready"
    with TestClient(create_app(Settings(repo=MODELS))) as client:
        while client.get("/v2/health/ready").status_code != 200:
            pass
        for probe in probes.values():
            assert client.get(probe["path"]).status_code == 200


def test_ports_match_the_service_settings(container: dict[str, Any]):
    port = container["ports"][0]
    assert port["containerPort"] == Settings().port == 8080
    service = find(render("overlays/cpu"), "Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    annotations = render("overlays/cpu")[2]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/model-volume"])
def test_configmap_settings_are_real_settings(overlay: str, monkeypatch: pytest.MonkeyPatch):
    docs = render(overlay)
    data = find(docs, "ConfigMap")["data"]
    fields = {f"SERVING_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, sorted(set(data) - fields)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load()  # parses with the service's own validation
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert str(settings.intra_op_threads) == container["resources"]["limits"]["cpu"]
    grace = find(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert settings.drain_timeout_s + pre_stop <= grace


def test_gpu_overlay_requests_a_gpu_and_the_cuda_provider(monkeypatch: pytest.MonkeyPatch):
    docs = render("overlays/gpu")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    monkeypatch.setenv("SERVING_PROVIDERS", find(docs, "ConfigMap")["data"]["SERVING_PROVIDERS"])
    assert Settings.load().providers == ["cuda"]


def test_the_service_runs_locked_down(deployment: dict[str, Any], container: dict[str, Any]):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_model_volume_overlay_points_the_service_at_the_volume(monkeypatch: pytest.MonkeyPatch):
    docs = render("overlays/model-volume")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
    monkeypatch.setenv("SERVING_REPO", find(docs, "ConfigMap")["data"]["SERVING_REPO"])
    assert Settings.load().repo == Path(mount["mountPath"])
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"][
        "claimName"
    ]
    assert claim == find(docs, "PersistentVolumeClaim")["metadata"]["name"]


def spark_application_problems(doc: dict[str, Any]) -> list[str]:
    """What the kubeflow spark-operator's own API models (`kubeflow-spark-api`, generated from
    its CRD) refuse in a SparkApplication: unknown fields anywhere (the models themselves
    ignore them, as the API server's pruning would, silently), then wrong types or missing
    required fields."""
    problems = _unknown_fields(SparkApplication, doc, "")
    try:
        SparkApplication.model_validate(doc)
    except pydantic.ValidationError as e:
        problems += [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    return problems


def _unknown_fields(model: type[pydantic.BaseModel], data: Any, path: str) -> list[str]:
    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f.annotation for name, f in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{path}{key}: unknown field (known: {', '.join(sorted(fields))})")
        else:
            problems += _walk(fields[key], value, f"{path}{key}.")
    return problems


def _walk(annotation: Any, value: Any, path: str) -> list[str]:
    """Follow Optional[...], List[...], Dict[str, ...] down to nested models."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return _unknown_fields(annotation, value, path)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, typing.List) and isinstance(value, list):  # noqa: UP006
        return [p for i, item in enumerate(value) for p in _walk(args[0], item, f"{path}{i}.")]
    if origin in (dict, typing.Dict) and isinstance(value, dict):  # noqa: UP006
        return [p for k, item in value.items() for p in _walk(args[1], item, f"{path}{k}.")]
    return [p for arg in args for p in _walk(arg, value, path)] if origin is typing.Union else []


def test_spark_application_is_valid_for_the_spark_operator():
    assert spark_application_problems(find(render("batch"), "SparkApplication")) == []


@pytest.mark.parametrize(
    ("where", "key", "value", "problem"),
    [
        (("spec", "driver"), "memroy", "2g", "spec.driver.memroy: unknown field"),
        (("spec",), "mainApplicationFiles", "x.py", "spec.mainApplicationFiles: unknown field"),
        (("spec", "executor"), "instances", "two", "spec.executor.instances"),
        (("spec",), "sparkConf", {"spark.task.cpus": 1}, "spec.sparkConf"),
    ],
)
def test_spark_application_check_catches_typos_and_wrong_types(
    where: tuple[str, ...], key: str, value: Any, problem: str
):
    app = find(render("batch"), "SparkApplication")
    target = app
    for step in where:
        target = target[step]
    target[key] = value
    assert any(p.startswith(problem) for p in spark_application_problems(app))


def test_spark_application_runs_the_real_batch_cli():
    app = find(render("batch"), "SparkApplication")
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["mainApplicationFile"].endswith("/site-packages/batch/__main__.py")
    args = batch_args(spec["arguments"])  # the job's own argument parser accepts them
    assert args.command == "score"
    assert spec["image"].split(":")[0] == "onnx-bundle-batch"


def test_training_job_runs_the_real_training_cli():
    job = find(render("training"), "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "training"]
    training_args(container["command"][3:])
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "model-repository"


def test_image_names_match_the_readme():
    readme = (REPO / "README.md").read_text()
    images = {"onnx-bundle-serving", "onnx-bundle-batch", "onnx-bundle-training"}
    for name in images:
        assert f"-t {name}" in readme, name
    manifests = "\n".join(yaml.safe_dump_all(render(k)) for k in KUSTOMIZATIONS)
    used = {
        line.split("image:")[1].strip().split(":")[0]
        for line in manifests.splitlines()
        if "image:" in line
    }
    assert used <= images
