"""Kubernetes manifests: valid against the real schemas, and consistent with the real service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from batch.__main__ import parse_args as batch_args
from serving.app import create_app
from serving.settings import Settings
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
            continue  # a CRD: checked below against the batch CLI
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
