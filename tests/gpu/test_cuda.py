"""The GPU path, run for real where there is one. CI has no GPU, so these skip there; a lent GPU
machine runs them (the issue notes say when and with what).

What a CPU cannot show: that the `gpu` extra's onnxruntime starts CUDA from NVIDIA's wheels
without `LD_LIBRARY_PATH`, that a bundle answers the same on CUDA as on the CPU, that the service
serves from CUDA with and without the batcher, and that DDP picks nccl and the GPU when the
process sees one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import inference
from inference import InferenceError, RuntimeOptions
from tests.conftest import MODELS, REPO
from tests.serving.conftest import Server
from tests.serving.test_batching import outputs_of, rows_for, send_together, v2_body
from tests.serving.test_v2 import binary_request

CUDA = RuntimeOptions(providers=("cuda",))


def _cuda_unusable() -> str | None:
    """Why a CUDA session cannot start here, or None when it can."""
    try:
        inference.load(MODELS / "iris", options=CUDA)
    except InferenceError as e:
        return str(e).split(";")[0]
    return None


WHY_NOT = _cuda_unusable()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no usable CUDA: {WHY_NOT}"),
]


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from bench.models import make_wide_bundle

    return make_wide_bundle(tmp_path_factory.mktemp("wide") / "wide")


def test_bundles_answer_the_same_on_cuda_as_on_the_cpu(wide_bundle: Path):
    rng = np.random.default_rng(0)
    cases = {
        MODELS / "side_effects": rng.uniform(18, 90, size=(1000, 1)),
        MODELS / "iris": rows_for(0, 1000),
        wide_bundle: rng.normal(size=(1000, 256)),
    }
    for folder, rows in cases.items():
        cpu, gpu = inference.load(folder), inference.load(folder, options=CUDA)
        assert gpu.providers[0] == "CUDAExecutionProvider", gpu.providers
        want, got = cpu.predict(rows), gpu.predict(rows)
        for name, expected in want.outputs.items():
            # float32 on both (TF32 off), summed in another order by cuBLAS than by MLAS
            np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)
        agree = np.mean(got.class_index == want.class_index)
        assert agree >= 0.999, f"{folder.name}: classes agree on {agree:.2%} of rows"


def test_tf32_is_off_unless_allowed():
    exact = inference.load(MODELS / "iris", options=CUDA)
    fast = inference.load(
        MODELS / "iris", options=RuntimeOptions(providers=("cuda",), allow_tf32=True)
    )
    assert exact.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    assert fast.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "1"


@pytest.fixture(scope="module")
def cuda_server(wide_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("side_effects", "iris"):
        shutil.copytree(MODELS / name, repo / name)
    shutil.copytree(wide_bundle.parent, repo / "wide")  # the model folder, version 1 inside
    server = Server("--repo", str(repo), "--providers", "cuda")
    yield server.wait_ready()
    server.stop()


def test_the_service_runs_every_model_on_cuda(cuda_server: Server, wide_bundle: Path):
    cpu_wide = inference.load(wide_bundle)
    rows = np.random.default_rng(1).normal(size=(8, 256)).astype(np.float32)
    with httpx.Client(base_url=cuda_server.url, timeout=30) as client:
        for name in ("side_effects", "iris", "wide"):
            meta = client.get(f"/v2/models/{name}").json()
            assert meta["parameters"]["providers"][0] == "CUDAExecutionProvider", meta
        v1 = client.post("/v1/models/side_effects:predict", json={"instances": [70.0, 20.0]})
        assert v1.status_code == 200, v1.text
        cpu_side = inference.load(MODELS / "side_effects").predict([[70.0], [20.0]])
        assert [p["label"] for p in v1.json()["predictions"]] == cpu_side.labels
        got = outputs_of(client.post("/v2/models/wide/infer", json=v2_body(rows)))
        np.testing.assert_allclose(got["scores"], cpu_wide.predict(rows).scores, atol=1e-5)
        content, headers = binary_request(rows)
        binary = client.post("/v2/models/wide/infer", content=content, headers=headers)
        assert binary.status_code == 200, binary.text
        np.testing.assert_allclose(outputs_of(binary)["scores"], got["scores"], atol=1e-6)
        bad = client.post("/v2/models/wide/infer", json=v2_body(rows[:, :10]))
        assert bad.status_code == 400 and "256" in bad.json()["error"], bad.text


def test_batched_requests_on_cuda_each_get_their_own_rows():
    server = Server(
        "--repo", "models", "--providers", "cuda", "--max-batch-size", "64",
        "--max-delay-us", "200000",
    ).wait_ready()  # fmt: skip
    try:
        iris = inference.load(MODELS / "iris")
        counts = [1, 3, 1, 7, 2, 1, 5, 1, 4, 1, 2, 6, 1, 1, 3, 8]
        bodies = [("/v2/models/iris/infer", v2_body(rows_for(i, n))) for i, n in enumerate(counts)]
        bodies.append(("/v2/models/iris/infer", v2_body(rows_for(99, 2)[:, :3])))  # a bad one
        answers = send_together(server.url, bodies)
        for i, (count, answer) in enumerate(zip(counts, answers, strict=False)):
            got, want = outputs_of(answer), iris.predict(rows_for(i, count))
            np.testing.assert_allclose(got["scores"], want.scores, rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(got["class_index"], want.class_index)
        assert answers[-1].status_code == 400, answers[-1].text
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'serving_batch_requests_count{model="iris",version="1"}' in metrics
    finally:
        server.stop()


@pytest.mark.slow
def test_ddp_takes_nccl_and_the_gpu_and_its_bundle_serves(tmp_path: Path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not torch.distributed.is_nccl_available():
        pytest.skip("torch sees no GPU or has no nccl")
    from training import train

    folder = tmp_path / "ddp"
    folder.mkdir()
    shutil.copy(MODELS / "iris" / "model.yaml", folder / "model.yaml")
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        str(REPO / "tests" / "gpu" / "nccl_rank.py"), str(folder), "20", str(report),
    ]  # fmt: skip
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": python_path}, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["backends"] == ["nccl"], result
    assert "error" not in result, result
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(MODELS / "iris" / "model.yaml", single / "model.yaml")
    cpu = train(single, epochs=20, verbose=0)
    assert abs(result["metrics"]["val_accuracy"] - cpu.metrics["val_accuracy"]) <= 0.05
    served = inference.load(result["bundle"], options=CUDA)
    assert served.providers[0] == "CUDAExecutionProvider"


def test_the_batch_worker_scores_on_cuda_as_on_the_cpu():
    """What each Spark task runs (`--providers cuda`), here without Spark: same rows, same
    bad-row messages, scores within float32 rounding of the CPU's."""
    pa = pytest.importorskip("pyarrow")
    from batch.worker import model_for, score_arrays, spec_for

    model = inference.load(MODELS / "side_effects")
    ages = pa.array([70.0, 20.0, None, float("nan"), 45.0, 18.5] * 500)
    cpu_spec = spec_for(model, None, None)
    gpu_spec = spec_for(model, None, None, providers=("cuda",))
    gpu_model = model_for(gpu_spec)
    assert gpu_model.providers[0] == "CUDAExecutionProvider"
    cpu = score_arrays(cpu_spec, model_for(cpu_spec), [ages]).to_pylist()
    gpu = score_arrays(gpu_spec, gpu_model, [ages]).to_pylist()
    assert len(gpu) == len(cpu) == 3000
    for got, want in zip(gpu, cpu, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, list):
                np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)
            else:
                assert got[key] == value, key


def test_a_gpu_that_cannot_start_is_one_error_in_cudas_words():
    """No GPU visible (a pod without its nvidia.com/gpu): onnxruntime's printed fallback block
    becomes one line of our error, with CUDA's reason."""
    code = (
        "import inference\n"
        "inference.load('models/iris', options=inference.RuntimeOptions(providers=('cuda',)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "EP Error" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("inference.errors.ProviderUnavailableError"), done.stderr
    assert "could not start CUDAExecutionProvider (no CUDA-capable device is detected)" in last
