"""Adaptive batching: merged runs give every request exactly its own rows, and nothing else.

End-to-end tests load a real uvicorn server with many concurrent clients; the batcher's own
tests drive it on the event loop with a real onnxruntime session.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

import inference
from serving.core.batching import (
    PROBE_EVERY,
    TURN_PROBE_EVERY,
    Batcher,
    BatchingConfig,
    BatchingOverride,
    BatchObserver,
)
from serving.core.deadlines import Deadlines
from serving.core.errors import InferenceTimeout
from tests import byom
from tests.conftest import MODELS
from tests.serving.conftest import ClientFactory, Server, running_app
from tests.serving.test_metrics import sample

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris() -> inference.Model:
    return inference.load(MODELS / "iris")


@pytest.fixture(scope="module")
def batching_server() -> Iterator[Server]:
    """A long delay, so that requests sent together are sure to share a batch."""
    server = Server("--repo", "models", "--max-batch-size", "64", "--max-delay-us", "200000")
    yield server.wait_ready()
    server.stop()


def rows_for(client: int, count: int) -> np.ndarray:
    """Different rows for every client, so a mix-up between requests cannot go unseen."""
    rng = np.random.default_rng(client)
    return rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(count, 4)).astype(np.float32)


def send_together(url: str, bodies: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """POST every body from its own thread, all released at once."""
    start = threading.Barrier(len(bodies), timeout=30)
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            start.wait()
            content = json.dumps(body)  # the standard library writes NaN literals, httpx won't
            answers[i] = client.post(
                path, content=content, headers={"content-type": "application/json"}
            )

    threads = [
        threading.Thread(target=send, args=(i, path, body)) for i, (path, body) in enumerate(bodies)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def v2_body(rows: np.ndarray, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "features",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]
    }


def test_concurrent_requests_of_different_sizes_each_get_their_own_rows(
    batching_server: Server, iris: inference.Model
):
    counts = [1, 3, 1, 7, 2, 1, 5, 1, 4, 1, 2, 6, 1, 1, 3, 8]
    bodies = [("/v2/models/iris/infer", v2_body(rows_for(i, n))) for i, n in enumerate(counts)]
    answers = send_together(batching_server.url, bodies)
    for i, (count, answer) in enumerate(zip(counts, answers, strict=True)):
        expected = iris.predict(rows_for(i, count))
        got = outputs_of(answer)
        assert got["scores"].shape == (count, 3)
        np.testing.assert_allclose(got["scores"], expected.scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got["class_index"], expected.class_index)

    text = httpx.get(f"{batching_server.url}/metrics").text
    runs = sample(text, "serving_batch_requests_count", model="iris", version="1")
    merged = sample(text, "serving_batch_requests_sum", model="iris", version="1")
    assert merged == len(counts)
    assert runs < len(counts)  # requests were merged
    assert sample(text, "serving_batch_rows_sum", model="iris", version="1") == sum(counts)
    assert sample(text, "serving_queue_duration_seconds_count", model="iris", version="1") == len(
        counts
    )


def test_v1_requests_merge_too_and_keep_their_order(batching_server: Server, iris: inference.Model):
    bodies = [
        (
            "/v1/models/iris:predict",
            {
                "instances": [
                    dict(zip(IRIS_FEATURES, r, strict=True)) for r in rows_for(i, n).tolist()
                ]
            },
        )
        for i, n in enumerate([2, 1, 3, 1, 2, 1, 1, 4])
    ]
    answers = send_together(batching_server.url, bodies)
    for (_, body), answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        rows = [[float(r[f]) for f in IRIS_FEATURES] for r in body["instances"]]
        expected = iris.predict(np.asarray(rows, np.float32))
        predictions = answer.json()["predictions"]
        assert [p["label"] for p in predictions] == list(expected.labels)


def test_a_bad_request_fails_alone_among_good_ones(batching_server: Server, iris: inference.Model):
    good = [("/v2/models/iris/infer", v2_body(rows_for(i, i % 3 + 1))) for i in range(8)]
    nan = rows_for(99, 2)
    nan[1, 2] = np.nan
    bad = [
        ("/v2/models/iris/infer", v2_body(nan)),  # NaN travels as a JSON NaN literal
        ("/v2/models/iris/infer", v2_body(rows_for(98, 2)[:, :3])),  # three features of four
        ("/v2/models/iris/infer", v2_body(rows_for(97, 1), outputs=["no_such_output"])),
        ("/v1/models/iris:predict", {"instances": [{"sepal_length": "long"}]}),
        ("/v1/models/iris:predict", {"instances": [[1.0, 2.0, None, 4.0]]}),
    ]
    answers = send_together(batching_server.url, good + bad)
    for i, answer in enumerate(answers[: len(good)]):
        expected = iris.predict(rows_for(i, i % 3 + 1))
        np.testing.assert_array_equal(outputs_of(answer)["class_index"], expected.class_index)
    for answer in answers[len(good) :]:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]


def test_requests_asking_for_different_outputs_share_a_batch(
    batching_server: Server, iris: inference.Model
):
    asks: list[list[str] | None] = [
        ["scores"],
        ["class_index"],
        ["dense"],
        None,
        ["dense", "scores"],
    ]
    bodies = [("/v2/models/iris/infer", v2_body(rows_for(i, 2), a)) for i, a in enumerate(asks)]
    answers = send_together(batching_server.url, bodies)
    for i, (ask, answer) in enumerate(zip(asks, answers, strict=True)):
        got = outputs_of(answer)
        names = ask or iris.metadata.default_outputs
        assert list(got) == names
        expected = iris.run(rows_for(i, 2), names).outputs
        for name in names:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)


def test_model_yaml_turns_batching_on_for_one_model_only(tmp_path: Path):
    repo = tmp_path / "models"
    for name in ("iris", "side_effects"):
        target = repo / name
        target.mkdir(parents=True)
        (target / "1").symlink_to(MODELS / name / "1")
    (repo / "iris" / "model.yaml").write_text(
        yaml.safe_dump({"serving": {"batching": {"max_batch_size": 32, "max_delay_us": 1000}}})
    )
    server = Server("--repo", str(repo)).wait_ready()
    try:
        with httpx.Client(base_url=server.url) as client:
            body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
            assert client.post("/v1/models/iris:predict", json=body).status_code == 200
            body = {"instances": [70]}
            assert client.post("/v1/models/side_effects:predict", json=body).status_code == 200
            text = client.get("/metrics").text
    finally:
        server.stop()
    assert sample(text, "serving_batch_requests_count", model="iris", version="1") == 1
    assert 'serving_batch_requests_count{model="side_effects"' not in text


@pytest.mark.parametrize("max_batch_size", [8, 0])
def test_a_reloaded_or_unloaded_model_version_is_freed(
    make_client: ClientFactory, repo_copy: Path, max_batch_size: int
):
    """The service keeps one batcher per model version: it must not keep a version (and its
    onnxruntime session) alive once a reload has replaced it or an unload has removed it."""
    client = make_client(repo=repo_copy, max_batch_size=max_batch_size, max_delay_us=1000)
    plane = client.app.dataplane  # type: ignore[attr-defined]
    body = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    versions = []
    for action in ("load", "unload"):  # a reload, then an unload
        assert client.post("/v1/models/iris:predict", json=body).status_code == 200
        versions.append(weakref.ref(plane.repository.get("iris")))
        assert client.post(f"/v2/repository/models/iris/{action}").status_code == 200
    if max_batch_size:
        text = client.get("/metrics").text
        assert sample(text, "serving_batch_requests_count", model="iris") == 2
    gc.collect()
    assert [version() for version in versions] == [None, None]


def test_an_invalid_batching_section_leaves_the_model_unavailable_with_the_reason(
    tmp_path: Path,
):
    repo = tmp_path / "models"
    (repo / "iris").mkdir(parents=True)
    (repo / "iris" / "1").symlink_to(MODELS / "iris" / "1")
    (repo / "iris" / "model.yaml").write_text("serving:\n  batching: {max_batch_size: -1}\n")
    server = Server("--repo", str(repo)).wait_ready()
    try:
        answer = httpx.get(f"{server.url}/v1/models/iris")
    finally:
        server.stop()
    assert answer.json()["ready"] is False
    assert "batching.max_batch_size" in answer.json()["reason"]


# The batcher itself, on an event loop, with a real session.


def make_batcher(
    model: inference.Model,
    *,
    max_batch_size: int = 100,
    max_delay_us: int = 50_000,
    fail_on: float | None = None,
    stall_on: float | None = None,
    inline_max_us: float = 0,
    timeout_s: float = 30,
) -> tuple[Batcher, list[tuple[int, int]]]:
    """A batcher whose runner fails for any batch holding the value `fail_on`, and takes half
    a second for any holding `stall_on`."""
    batches: list[tuple[int, int]] = []

    def run(
        m: inference.Model, feeds: Mapping[str, np.ndarray], names: list[str] | None
    ) -> dict[str, np.ndarray]:
        matrix = feeds["features"]
        if fail_on is not None and (matrix == fail_on).any():
            raise RuntimeError("this row breaks the model")
        if stall_on is not None and (matrix == stall_on).any():
            time.sleep(0.5)
        return m.run(matrix, names).outputs

    batcher = Batcher(
        model,
        BatchingConfig(max_batch_size, max_delay_us),
        run,
        ThreadPoolExecutor(1),
        inline_max_us=inline_max_us,
        deadlines=Deadlines(timeout_s),
        observer=BatchObserver(batch=lambda rows, n: batches.append((rows, n))),
    )
    return batcher, batches


def submit(batcher: Batcher, matrix: np.ndarray) -> Any:
    """Submit one request's rows (the model's one input) for its default outputs."""
    return batcher.submit({"features": matrix}, len(matrix), None)


async def gather_submits(batcher: Batcher, matrices: list[np.ndarray]) -> list[Any]:
    return await asyncio.gather(*(submit(batcher, m) for m in matrices), return_exceptions=True)


@pytest.mark.parametrize("inline_max_us", [0, 1e6])  # through the executor, and on the loop
def test_a_failing_merged_run_is_retried_request_by_request(
    iris: inference.Model, inline_max_us: float
):
    matrices = [rows_for(i, 2) for i in range(5)]
    matrices[3][0, 0] = -999.0
    batcher, batches = make_batcher(iris, fail_on=-999.0, inline_max_us=inline_max_us)
    results = asyncio.run(gather_submits(batcher, matrices))
    assert batches == [(10, 5)]
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, RuntimeError)
        else:
            expected = iris.predict(matrices[i]).outputs
            np.testing.assert_allclose(result["scores"], expected["scores"], atol=1e-6)


def test_batches_never_exceed_max_batch_size_and_a_large_request_goes_alone(
    iris: inference.Model,
):
    counts = [3, 3, 3, 12, 2, 1]
    batcher, batches = make_batcher(iris, max_batch_size=8)
    matrices = [rows_for(i, n) for i, n in enumerate(counts)]
    results = asyncio.run(gather_submits(batcher, matrices))
    assert [r["scores"].shape[0] for r in results] == counts
    assert sum(rows for rows, _ in batches) == sum(counts)
    assert all(rows <= 8 or n == 1 for rows, n in batches)
    assert (12, 1) in batches


def test_a_cancelled_request_is_dropped_from_its_batch(iris: inference.Model):
    batcher, batches = make_batcher(iris, max_delay_us=20_000)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(submit(batcher, rows_for(0, 2)))
        second = asyncio.ensure_future(submit(batcher, rows_for(1, 3)))
        await asyncio.sleep(0)
        first.cancel()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(scenario())
    assert isinstance(first, asyncio.CancelledError)
    assert second["scores"].shape == (3, 3)
    assert batches == [(3, 1)]


def test_with_no_delay_one_request_runs_at_once(iris: inference.Model):
    batcher, batches = make_batcher(iris, max_delay_us=0)

    async def one() -> Any:
        return await asyncio.wait_for(submit(batcher, rows_for(0, 1)), timeout=5)

    assert asyncio.run(one())["scores"].shape == (1, 3)
    assert batches == [(1, 1)]


def waiting_batcher(model: inference.Model, delay_s: float) -> tuple[Batcher, list[float]]:
    """A batcher that runs on the loop and reports how long each request waited."""
    waited: list[float] = []
    batcher = Batcher(
        model,
        BatchingConfig(max_batch_size=8, max_delay_us=round(delay_s * 1e6)),
        lambda m, feeds, names: m.outputs(feeds, names),
        ThreadPoolExecutor(1),
        inline_max_us=1e9,
        observer=BatchObserver(queued=waited.append),
    )
    return batcher, waited


def test_a_lone_client_stops_paying_the_delay_and_overlapping_clients_bring_it_back(
    iris: inference.Model,
):
    delay_s = 0.05
    batcher, waited = waiting_batcher(iris, delay_s)

    async def scenario() -> None:
        for i in range(20):  # one client: nothing ever joins its requests
            await submit(batcher, rows_for(i, 1))
        results = await gather_submits(batcher, [rows_for(i, 1) for i in range(3)])
        assert [r["scores"].shape for r in results] == [(1, 3)] * 3
        await submit(batcher, rows_for(0, 1))

    asyncio.run(scenario())
    learning, lone, together, after = waited[:11], waited[11:20], waited[20:23], waited[23]
    assert min(learning) >= delay_s * 0.95  # a new batcher waits as configured
    assert max(lone) < delay_s / 5  # waiting merged nothing: it stopped
    assert max(together) < delay_s / 5  # these came in one turn of the loop, merged at once
    assert after >= delay_s * 0.95  # a merge shows that waiting may pay again


def test_while_waiting_does_not_pay_every_256th_request_still_waits(iris: inference.Model):
    delay_s = 0.02
    batcher, waited = waiting_batcher(iris, delay_s)

    async def scenario() -> None:
        for i in range(11 + 2 * PROBE_EVERY):
            await submit(batcher, rows_for(i, 1))

    asyncio.run(scenario())
    probes = [i for i, seconds in enumerate(waited[11:]) if seconds >= delay_s * 0.95]
    assert probes == [PROBE_EVERY - 1, 2 * PROBE_EVERY - 1]
    assert max(w for i, w in enumerate(waited[11:]) if i not in probes) < delay_s / 2


def test_with_no_delay_a_lone_client_runs_at_once_and_overlapping_clients_merge_again():
    """Runs on the loop: requests of one turn merge only if the first waits for the turn, and a
    lone client stops paying that turn (its request runs inside `submit`)."""
    model = inference.load(MODELS / "iris")  # its own: the module's `iris` stays unmeasured
    model.warm_up(probe_rows=8)  # a measured cost: the batcher runs it on the loop
    batcher, batches = make_batcher(model, max_delay_us=0, inline_max_us=1e9)
    three = [rows_for(i, 1) for i in range(3)]

    async def scenario() -> list[list[tuple[int, int]]]:
        seen = [len(batches)]
        await gather_submits(batcher, three)  # a new batcher waits the turn: one batch
        seen.append(len(batches))
        for i in range(11):  # one client: nothing ever joins its requests
            await submit(batcher, rows_for(i, 1))
        seen.append(len(batches))
        for _ in range(TURN_PROBE_EVERY // 3 + 2):  # three clients at once, again and again
            results = await gather_submits(batcher, three)
            assert [r["scores"].shape for r in results] == [(1, 3)] * 3
            seen.append(len(batches))
        return [batches[a:b] for a, b in itertools.pairwise(seen)]

    first, lone, *overlapping = asyncio.run(scenario())
    assert first == [(3, 3)]
    assert lone == [(1, 1)] * 11
    assert overlapping[0] == [(1, 1)] * 3  # waiting stopped paying: each ran at once, alone
    merged_at = next(i for i, group in enumerate(overlapping) if len(group) < 3)
    assert merged_at <= TURN_PROBE_EVERY // 3  # a turn probe merged two of them
    assert overlapping[-1] == [(3, 3)]  # and the turn's wait is back


def test_override_keeps_unset_keys():
    base = BatchingConfig(max_batch_size=16, max_delay_us=300)
    assert base.override(BatchingOverride(max_delay_us=50)) == BatchingConfig(16, 50)
    assert base.override(BatchingOverride(max_batch_size=0)).enabled is False
    assert base.override(None) == base


def test_a_timed_out_request_leaves_no_reference_cycle_holding_its_rows(
    iris: inference.Model,
):
    """Under overload, queued requests time out. The timeout's traceback holds the frames it
    went through; none may hold the future that carries it, or the request's rows wait in a
    reference cycle for the cyclic collector, which a serving process runs rarely
    (`serving/ops/collector.py`)."""
    batcher, _ = make_batcher(iris, max_delay_us=0, stall_on=-5.0, timeout_s=0.1)

    async def scenario() -> weakref.ref[np.ndarray]:
        slow = rows_for(0, 1)
        slow[0, 0] = -5.0
        running = asyncio.ensure_future(submit(batcher, slow))
        await asyncio.sleep(0.02)  # the slow batch is running; the next request must queue
        rows = rows_for(1, 2)
        held = weakref.ref(rows)
        try:
            await submit(batcher, rows)
        except InferenceTimeout:
            pass
        else:
            raise AssertionError("the request should have timed out")
        del rows
        with contextlib.suppress(InferenceTimeout):
            await running
        await asyncio.sleep(0.6)  # the slow run ends
        return held

    gc.disable()  # only reference counting frees anything here
    try:
        held = asyncio.run(scenario())
    finally:
        gc.enable()
    assert held() is None


def test_requests_stuck_behind_a_slow_run_time_out_and_the_batcher_recovers(
    iris: inference.Model,
):
    batcher, _ = make_batcher(iris, max_delay_us=0, stall_on=-5.0, timeout_s=0.2)
    slow = rows_for(0, 1)
    slow[0, 0] = -5.0

    async def scenario() -> tuple[list[Any], Any]:
        running = asyncio.ensure_future(submit(batcher, slow))
        await asyncio.sleep(0.05)  # the slow batch is running; the next one must queue
        queued = asyncio.ensure_future(submit(batcher, rows_for(1, 1)))
        stuck = await asyncio.gather(running, queued, return_exceptions=True)
        await asyncio.sleep(0.5)  # the slow run ends
        after = await asyncio.wait_for(submit(batcher, rows_for(2, 1)), timeout=5)
        return stuck, after

    stuck, after = asyncio.run(scenario())
    assert all(isinstance(r, InferenceTimeout) for r in stuck)
    assert after["scores"].shape == (1, 3)


def test_requests_merge_only_with_requests_of_their_inner_shape(byom_repo: Path):
    """Token requests of lengths 3 and 5, sent together: two merged runs, one per length (none
    padded, none mixed), in the order they came, and each request gets its own rows back."""
    model = inference.load(byom_repo / "tokens")
    batches: list[tuple[int, int]] = []
    batcher = Batcher(
        model,
        BatchingConfig(max_batch_size=100, max_delay_us=50_000),
        lambda m, feeds, names: m.outputs(feeds, names),
        ThreadPoolExecutor(1),
        inline_max_us=0,
        observer=BatchObserver(batch=lambda rows, n: batches.append((rows, n))),
    )
    requests = [byom.token_batch(rows=1 + i % 2, length=3 + 2 * (i % 2), seed=i) for i in range(4)]

    async def together() -> list[Any]:
        return await asyncio.gather(
            *(batcher.submit(feeds, len(feeds["input_ids"]), None) for feeds in requests)
        )

    results = asyncio.run(together())
    assert batches == [(2, 2), (4, 2)]
    for feeds, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result["hidden"], model.predict(feeds)["hidden"], rtol=1e-6)


def test_a_model_with_a_fixed_first_dimension_is_never_batched(tmp_path: Path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model_file = tmp_path / "fixed" / "1" / "model.onnx"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(helper.make_model(graph).SerializeToString())
    with running_app(repo=tmp_path, max_batch_size=8) as client:
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [-1, 0, 2]}]}
        answer = client.post("/v2/models/fixed/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [0, 0, 2]
        plane = client.app.dataplane  # type: ignore[attr-defined]
        assert plane.lane(plane.model("fixed")).batcher is None
