"""Several worker processes, one set of metrics: whichever worker a scrape reaches, it sees them
all (counters of dead workers kept, gauges of live ones only)."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.ops import shared_metrics
from serving.ops.metrics import Metrics
from serving.ops.shared_metrics import SharedMetrics
from tests.serving.conftest import Server, run_cli, running_app
from tests.serving.test_metrics import sample

PREDICT = "/v1/models/side_effects:predict"
ENDPOINT = "/v1/models/{name}:predict"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def traffic(metrics: Metrics, requests: int, *, load_s: float, answering: int) -> None:
    for _ in range(requests):
        metrics.observe_request("side_effects", "1", ENDPOINT, 200, 0.002)
        metrics.observe_request_rows("side_effects", 1, 3)
    metrics.model_loaded("side_effects", 1, load_s)
    metrics.answering = answering


def worker(
    folder: Path, pid: int | None, requests: int, *, load_s: float, answering: int
) -> Metrics:
    """A worker (None: this process) that answered `requests` requests; another process's
    has written its file."""
    metrics = Metrics(SharedMetrics(folder, pid=pid))
    traffic(metrics, requests, load_s=load_s, answering=answering)
    if pid is not None:
        metrics.flush()
    return metrics


def dead_worker(folder: Path, requests: int) -> Path:
    """The file a worker left when it exited, after answering `requests` requests."""
    shared = worker(folder, dead_pid(), requests, load_s=9.0, answering=5).shared
    assert shared is not None
    return shared.file


def test_a_scrape_adds_the_other_workers_values(tmp_path: Path):
    here = worker(tmp_path, None, 3, load_s=0.5, answering=1)
    worker(tmp_path, os.getppid(), 4, load_s=2.0, answering=2)  # a process that runs

    text = here.exposition().decode()
    labels = {"model": "side_effects", "version": "1"}
    assert sample(text, "serving_requests_total", **labels, endpoint=ENDPOINT, status="200") == 7
    assert sample(text, "serving_request_duration_seconds_count", **labels) == 7
    assert sample(text, "serving_request_duration_seconds_bucket", **labels, le="0.0025") == 7
    assert sample(text, "serving_request_rows_sum", **labels) == 21
    assert "serving_requests_in_flight 3.0" in text  # summed
    assert sample(text, "serving_model_load_duration_seconds", **labels) == 2.0  # the longest
    # a scrape adds the others' values to its output, never into this process's own
    assert sample(here.exposition().decode(), "serving_request_rows_count", **labels) == 7
    here.flush()
    assert json.loads(here.shared.file.read_text())["families"]["serving_request_rows"] == [  # type: ignore[union-attr]
        [["side_effects", "1"], [[0, 0, 3] + [0] * 11, 9.0]]
    ]


def test_a_dead_workers_counts_stay_and_its_gauges_go(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    traffic(here, 1, load_s=0.5, answering=0)
    dead = Metrics(SharedMetrics(tmp_path, pid=dead_pid()))
    traffic(dead, 5, load_s=9.0, answering=4)
    dead.flush()

    text = here.exposition().decode()
    labels = {"model": "side_effects", "version": "1"}
    assert sample(text, "serving_requests_total", **labels, endpoint=ENDPOINT, status="200") == 6
    assert "serving_requests_in_flight 0.0" in text
    assert sample(text, "serving_model_load_duration_seconds", **labels) == 0.5


def rows_count(text: str) -> float:
    return sample(text, "serving_request_rows_count", model="side_effects", version="1")


def test_dead_workers_files_are_folded_into_one_and_every_total_stays(tmp_path: Path):
    here = worker(tmp_path, None, 1, load_s=0.5, answering=0)
    live = worker(tmp_path, os.getppid(), 2, load_s=2.0, answering=1)  # a process that runs
    dead = [dead_worker(tmp_path, requests) for requests in (3, 4)]
    assert here.shared is not None and live.shared is not None
    (tmp_path / f"metrics-{dead_pid()}-ab.tmp").write_text("{")  # cut short by its death
    writing = tmp_path / f"metrics-{os.getppid()}-cd.tmp"  # a live worker's write under way
    writing.write_text("{")

    before = here.exposition().decode()  # reads the dead workers' files, then folds them
    after = here.exposition().decode()  # reads the folded file
    labels = {"model": "side_effects", "version": "1"}
    for text in (before, after):
        assert (
            sample(text, "serving_requests_total", **labels, endpoint=ENDPOINT, status="200") == 10
        )
        assert sample(text, "serving_request_rows_sum", **labels) == 30
        assert sample(text, "serving_request_rows_bucket", **labels, le="4.0") == 10
        assert "serving_requests_in_flight 1.0" in text  # the dead workers' gauges do not count
        assert sample(text, "serving_model_load_duration_seconds", **labels) == 2.0
    assert sorted(p.name for p in tmp_path.glob("metrics-*")) == sorted(
        [here.shared.file.name, live.shared.file.name, "metrics-dead.json", writing.name]
    )
    folded = json.loads((tmp_path / "metrics-dead.json").read_text())
    assert sorted(folded["merged"]) == sorted(p.name for p in dead)
    assert "serving_requests_in_flight" not in folded["families"]

    later = dead_worker(tmp_path, 5)  # another worker dies: added to what was folded
    assert rows_count(here.exposition().decode()) == 15
    assert rows_count(live.exposition().decode()) == 15  # whichever worker answers
    assert not later.exists()
    assert json.loads((tmp_path / "metrics-dead.json").read_text())["merged"] == [later.name]


def test_a_folding_cut_short_counts_nothing_twice(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    dead = dead_worker(tmp_path, 3)
    left = dead.read_bytes()
    assert rows_count(here.exposition().decode()) == 3
    assert not dead.exists()
    dead.write_bytes(left)  # as if the process stopped after writing the folded file
    assert rows_count(here.exposition().decode()) == 3  # not 6
    assert not dead.exists()  # that scrape removed it
    assert rows_count(here.exposition().decode()) == 3

    dead.write_bytes(left)  # again, and another worker has died since
    other = dead_worker(tmp_path, 4)
    assert rows_count(here.exposition().decode()) == 7
    merged = json.loads((tmp_path / "metrics-dead.json").read_text())["merged"]
    assert sorted(merged) == sorted([dead.name, other.name])
    assert not dead.exists() and not other.exists()
    assert rows_count(here.exposition().decode()) == 7


def workers_that_took(folder: Path, *seconds: tuple[int | None, float]) -> list[Metrics]:
    """A worker per process id (None: this process), each having answered one request in
    so many seconds."""
    workers = [Metrics(SharedMetrics(folder, pid=pid)) for pid, _ in seconds]
    for metrics, (_, took) in zip(workers, seconds, strict=True):
        metrics.observe_request("side_effects", "1", ENDPOINT, 200, took)
        metrics.flush()
    return workers


def duration_sum(worker: Metrics) -> float:
    text = worker.exposition().decode()
    return sample(text, "serving_request_duration_seconds_sum", model="side_effects")


def test_sums_are_added_exactly_whatever_the_order(tmp_path: Path):
    here, *_ = workers_that_took(tmp_path, (None, 0.1), (os.getppid(), 0.2), (1, 0.3))
    # one by one, in any order after 0.1, 0.6000000000000001; the next scrape, answered by
    # a worker that adds in another order, could show 0.6: a counter reset for Prometheus
    assert duration_sum(here) == math.fsum([0.1, 0.2, 0.3]) == 0.6


def test_folding_moves_no_sum_by_a_bit(tmp_path: Path):
    here, *dead = workers_that_took(tmp_path, (None, 0.3), (dead_pid(), 0.1), (dead_pid(), 0.2))
    before = duration_sum(here)  # then folds 0.1 and 0.2 (0.30000000000000004 as one float)
    assert not any(d.shared.file.exists() for d in dead)  # type: ignore[union-attr]
    assert duration_sum(here) == before == 0.6


def test_a_scrape_waits_while_another_process_folds(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    dead = dead_worker(tmp_path, 3)
    scraped: list[bytes] = []
    with open(tmp_path / ".metrics.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker folding
        scrape = threading.Thread(target=lambda: scraped.append(here.exposition()))
        scrape.start()
        scrape.join(0.5)
        assert scrape.is_alive() and not scraped  # it waits for the folding to end
    scrape.join(10)
    assert rows_count(scraped[0].decode()) == 3
    assert not dead.exists()


def test_no_folding_while_another_process_reads_the_folder(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    dead = dead_worker(tmp_path, 3)
    with open(tmp_path / ".metrics.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # another worker's scrape, under way
        assert rows_count(here.exposition().decode()) == 3
        assert dead.exists()
    assert rows_count(here.exposition().decode()) == 3
    assert not dead.exists()


def test_a_damaged_folded_file_is_left_out_and_nothing_more_is_folded_into_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    here = Metrics(SharedMetrics(tmp_path))
    (tmp_path / "metrics-dead.json").write_text('{"merged": "all", "families": {}}')
    dead = dead_worker(tmp_path, 3)
    with caplog.at_level(logging.WARNING, logger="serving"):
        assert rows_count(here.exposition().decode()) == 3
        assert rows_count(here.exposition().decode()) == 3
    assert dead.exists()  # still counted where it is
    assert [r.getMessage() for r in caplog.records] == [
        f"metrics file {tmp_path / 'metrics-dead.json'} is unreadable, left out of scrapes: "
        "merged: 'all' are not file names"
    ]


def test_alone_a_worker_writes_nothing_and_scrapes_only_itself(tmp_path: Path):
    metrics = Metrics(None)
    traffic(metrics, 2, load_s=0.1, answering=0)
    metrics.flush()
    assert list(tmp_path.iterdir()) == []
    text = metrics.exposition().decode()
    assert sample(text, "serving_request_rows_count", model="side_effects", version="1") == 2


ROWS = ["side_effects", "1"]
DAMAGED: dict[str, object] = {
    "not JSON": "{not json",
    "families not a mapping": {"pid": 1, "started": 0, "families": [1]},
    "a histogram under a counter": {
        "pid": 1, "started": 0, "families": {"serving_requests": [[["m", "1", "/", "200"], [[1], 1.0]]]}
    },
    "a number under a histogram": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, 3.0]]}
    },
    "other buckets": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, [[1, 2], 3.0]]]}
    },
    "counts that are not counts": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, [None, 3.0]]]}
    },
    "labels that do not fit": {
        "pid": 1, "started": 0, "families": {"serving_requests": [[["m"], 1.0]]}
    },
    "a negative count": {
        "pid": 1, "started": 0, "families": {"serving_requests": [[["m", "1", "/", "200"], -99]]}
    },
    "a sum that is a string": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, [[0] * 14, "nan"]]]}
    },
    "a sum that adding would overflow": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, [[0] * 14, 1e308]]]}
    },
    "a sum in more parts than folding makes": {
        "pid": 1, "started": 0, "families": {"serving_request_rows": [[ROWS, [[0] * 14, [1.0] * 65]]]}
    },
    "a process id no process can have": {"pid": 2**40, "started": 0, "families": {}, "x": []},
}  # fmt: skip
"""The last one is well formed: only its process is gone."""


def test_a_damaged_file_is_left_out_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    here = Metrics(SharedMetrics(tmp_path))
    traffic(here, 2, load_s=0.1, answering=0)
    for i, content in enumerate(DAMAGED.values()):
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / f"metrics-{i}-ab.json").write_text(text)
    os.mkfifo(tmp_path / "metrics-99-ab.json")  # reading it would block the scrape for good
    other = Metrics(SharedMetrics(tmp_path, pid=os.getppid()))
    traffic(other, 50, load_s=0.1, answering=0)
    other.flush()
    assert other.shared is not None
    written = other.shared.file.read_text()
    other.shared.file.unlink()
    (tmp_path / "metrics-98-ab.tmp").write_text(written)  # a write under way
    (tmp_path / "metrics-report.json").write_text(written)  # someone else's file
    with caplog.at_level(logging.WARNING, logger="serving"):
        first = here.exposition().decode()
        here.exposition()
    assert sample(first, "serving_request_rows_count", model="side_effects", version="1") == 2
    assert 'serving_requests_total{endpoint="/"' not in first
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(DAMAGED) - 1 + 1, warnings  # once each, not at every scrape
    assert all("is unreadable, left out of scrapes" in w for w in warnings)
    assert any(
        "metrics-99-ab.json is unreadable" in w and "not a regular file" in w for w in warnings
    )


def test_without_its_folder_a_scrape_shows_what_was_last_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = tmp_path / "metrics"
    shared_metrics.prepare(folder)
    here = Metrics(SharedMetrics(folder))
    traffic(here, 10, load_s=0.1, answering=0)
    here.flush()
    traffic(here, 5, load_s=0.1, answering=0)
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING, logger="serving"):
        text = here.exposition().decode()
    # 15 counted, 10 written: another worker's next scrape could show only those 10
    assert sample(text, "serving_request_rows_count", model="side_effects", version="1") == 10
    assert "could not share this worker's metrics" in caplog.text


def test_the_app_answers_a_scrape_beside_a_damaged_file(tmp_path: Path):
    (tmp_path / "metrics-7-ab.json").write_text(json.dumps(DAMAGED["families not a mapping"]))
    with running_app(metrics_dir=tmp_path) as client:
        assert client.get("/metrics").status_code == 200


def test_totals_never_go_back_whichever_worker_answers(tmp_path: Path):
    a = Metrics(SharedMetrics(tmp_path))
    b = Metrics(SharedMetrics(tmp_path, pid=os.getppid()))
    traffic(b, 1, load_s=0.1, answering=0)
    b.flush()
    seen = []
    for step in range(6):
        traffic(a, 10, load_s=0.1, answering=0)  # between its flushes
        if step == 2:
            a.flush()
        scraped = (a if step % 2 == 0 else b).exposition().decode()
        seen.append(
            sample(scraped, "serving_request_rows_count", model="side_effects", version="1")
        )
    # a drop would read as a counter reset in Prometheus; b shows what a last showed
    assert seen == [11, 11, 31, 31, 51, 51]


def test_a_process_id_taken_over_keeps_the_old_files_counts_not_its_gauges(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    pid = os.getppid()  # a running process, as a new worker that got a dead one's id
    old, new = Metrics(SharedMetrics(tmp_path, pid=pid)), Metrics(SharedMetrics(tmp_path, pid=pid))
    for metrics, started, token in ((old, 1.0, "ffff"), (new, 2.0, "0000")):
        shared = metrics.shared
        assert shared is not None
        shared.started = started  # the newest is live, whatever the order of the names
        shared.file = tmp_path / f"metrics-{pid}-{token}.json"
    traffic(old, 5, load_s=7.0, answering=3)
    old.flush()
    traffic(new, 1, load_s=0.2, answering=1)
    new.flush()
    assert len(list(tmp_path.glob("metrics-*.json"))) == 2  # its own file each
    text = here.exposition().decode()
    labels = {"model": "side_effects", "version": "1"}
    assert sample(text, "serving_request_rows_count", **labels) == 6
    assert "serving_requests_in_flight 1.0" in text
    assert sample(text, "serving_model_load_duration_seconds", **labels) == 0.2


def test_prepare_clears_a_previous_runs_files_and_explains_an_unusable_folder(tmp_path: Path):
    folder = tmp_path / "metrics"
    shared_metrics.prepare(folder)
    previous = (
        "metrics-1-ab12.json",
        "metrics-2-cd34.tmp",
        "metrics-dead.json",
        "metrics-dead.tmp",
    )
    for name in (*previous, "metrics-report.json", "notes"):
        (folder / name).write_text("{}")
    shared_metrics.prepare(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics-report.json", "notes"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"metrics folder {a_file / 'm'} cannot be used"):
        shared_metrics.prepare(a_file / "m")


def test_cli_refuses_a_metrics_folder_it_cannot_write(tmp_path: Path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = run_cli("--repo", "models", "--metrics-dir", str(a_file))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: metrics folder {a_file} cannot be used")
    assert len(result.stderr.strip().splitlines()) == 1


def scrape_total(url: str) -> float:
    """Requests answered by predict, from one scrape on a new connection (any worker)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    try:
        return sample(text, "serving_requests_total", endpoint=ENDPOINT, status="200")
    except AssertionError:
        return 0.0


def wait_for_total(url: str, want: float, timeout: float = 20) -> list[float]:
    """Scrapes until eight in a row see `want`; returns the last eight."""
    deadline = time.monotonic() + timeout
    seen: list[float] = []
    while time.monotonic() < deadline:
        seen = [*seen, scrape_total(url)][-8:]
        if seen == [want] * 8:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"scrapes saw {seen}, want {want} in each")


def workers_ready(server: Server, folder: Path) -> None:
    """Both workers have started (a file each) and loaded their models (20 ready answers in
    a row, each on a new connection, so from either worker)."""
    deadline = time.monotonic() + 60
    while len(list(folder.glob("metrics-*.json"))) < 2:
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    ready = 0
    while ready < 20:
        assert time.monotonic() < deadline, server.output()
        ok = httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
        ready = ready + 1 if ok else 0


def two_workers(folder: Path, flush_s: str, *flags: str) -> Server:
    """`python -m serving --workers 2 --metrics-dir folder`, both workers ready."""
    server = Server(
        *("--repo", "models", "--workers", "2", "--metrics-dir", str(folder), *flags),
        env={"SERVING_METRICS_FLUSH_S": flush_s},
    ).wait_ready()
    try:
        workers_ready(server, folder)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.mark.slow
def test_two_workers_any_scrape_sees_every_request_even_after_one_is_killed(tmp_path: Path):
    folder = tmp_path / "metrics"
    server = two_workers(folder, flush_s="0.1")
    try:
        sent = 0
        while sent < 1000:  # until both workers answered some, whichever the kernel chose
            for _ in range(10):  # a new connection each: the kernel spreads them over workers
                answer = httpx.post(f"{server.url}{PREDICT}", json={"instances": [20]}, timeout=10)
                assert answer.status_code == 200
            sent += 10
            time.sleep(0.2)  # a flush
            answered = {p: predicted(p) for p in folder.glob("metrics-*.json")}
            if len(answered) == 2 and min(answered.values()) > 0:
                break
        assert min(answered.values()) > 0, answered
        wait_for_total(server.url, sent)
        answered = {p: predicted(p) for p in folder.glob("metrics-*.json")}
        assert sum(answered.values()) == sent
        pids = sorted(int(p.stem.split("-")[1]) for p in answered)

        os.kill(pids[0], signal.SIGKILL)  # a worker dies; uvicorn starts another
        deadline = time.monotonic() + 60
        while len(list(folder.glob("metrics-[0-9]*.json"))) < 3:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        wait_for_total(server.url, sent)  # the dead worker's requests still count
        if not shared_metrics.pid_alive(pids[0]):  # folded by that scrape (unless a new
            assert len(list(folder.glob("metrics-[0-9]*.json"))) == 2  # worker took its pid)
            assert json.loads((folder / "metrics-dead.json").read_text())["merged"]
        wait_for_total(server.url, sent)  # and count from there, whichever worker answers
        wait_for_total(server.url, sent)
    finally:
        server.stop()


def predicted(path: Path) -> float:
    """Requests answered by predict, from one worker's file."""
    data = json.loads(path.read_text())
    return sum(
        value
        for labels, value in data["families"]["serving_requests"]
        if labels[2:] == [ENDPOINT, "200"]
    )


@pytest.mark.slow
def test_without_a_folder_several_workers_share_a_temporary_one_removed_at_exit(tmp_path: Path):
    server = Server(
        "--repo",
        "models",
        "--workers",
        "2",
        env={"TMPDIR": str(tmp_path), "SERVING_METRICS_FLUSH_S": "0.1"},
    ).wait_ready()
    try:
        made = list(tmp_path.glob("serving-metrics-*"))
        assert len(made) == 1
        workers_ready(server, made[0])
        for _ in range(10):
            assert httpx.post(f"{server.url}{PREDICT}", json={"instances": [70]}).status_code == 200
        wait_for_total(server.url, 10)
    finally:
        server.stop()
    assert list(tmp_path.glob("serving-metrics-*")) == []


@pytest.mark.slow
def test_each_worker_writes_its_last_counts_when_it_stops(tmp_path: Path):
    folder = tmp_path / "metrics"
    server = two_workers(folder, flush_s="3600")  # written at start and at the stop only
    try:
        for _ in range(12):
            assert httpx.post(f"{server.url}{PREDICT}", json={"instances": [70]}).status_code == 200
        assert sum(predicted(p) for p in folder.glob("metrics-*.json")) == 0
    finally:
        server.stop()
    assert sum(predicted(p) for p in folder.glob("metrics-*.json")) == 12
