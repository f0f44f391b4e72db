"""Several worker processes, one set of metrics: whichever worker a scrape reaches, it sees them
all (counters of dead workers kept, gauges of live ones only), in prometheus_client's
multiprocess files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from serving.ops import cheap_metrics
from serving.ops.cheap_metrics import SharedMetrics
from serving.ops.metrics import Metrics
from tests.serving.conftest import Server, run_cli, running_app
from tests.serving.test_metrics import sample

PREDICT = "/v1/models/side_effects:predict"
ENDPOINT = "/v1/models/{name}:predict"
LABELS = {"model": "side_effects", "version": "1"}


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
    has written its files."""
    metrics = Metrics(SharedMetrics(folder, pid=pid))
    traffic(metrics, requests, load_s=load_s, answering=answering)
    if pid is not None:
        metrics.flush()
    return metrics


def files_of(metrics: Metrics) -> list[str]:
    """The names of a worker's files, by kind."""
    assert metrics.shared is not None
    return sorted(p.name for p in metrics.shared.folder.glob(f"*_{metrics.shared.process}.db"))


def rows_count(text: str) -> float:
    return sample(text, "serving_request_rows_count", **LABELS)


def test_a_scrape_adds_the_other_workers_values(tmp_path: Path):
    here = worker(tmp_path, None, 3, load_s=0.5, answering=1)
    other = worker(tmp_path, os.getppid(), 4, load_s=2.0, answering=2)  # a process that runs

    text = here.exposition().decode()
    assert sample(text, "serving_requests_total", **LABELS, endpoint=ENDPOINT, status="200") == 7
    assert sample(text, "serving_request_duration_seconds_count", **LABELS) == 7
    assert sample(text, "serving_request_duration_seconds_bucket", **LABELS, le="0.0025") == 7
    assert sample(text, "serving_request_rows_sum", **LABELS) == 21
    assert "serving_requests_in_flight 3.0" in text  # summed
    assert sample(text, "serving_model_load_duration_seconds", **LABELS) == 2.0  # the longest
    assert rows_count(other.exposition().decode()) == 7  # whichever worker answers
    # a scrape adds the others' values to its output, never into this process's own
    assert rows_count(here.exposition().decode()) == 7
    assert "serving_requests_created" not in text  # a sum of creation times means nothing
    assert files_of(here) == [
        f"{kind}_{here.shared.process}.db"  # type: ignore[union-attr]
        for kind in ("counter", "gauge_livemax", "gauge_livesum", "histogram")
    ]


def test_the_files_are_prometheus_clients_own(tmp_path: Path):
    """prometheus_client's multiprocess collector reads them as it reads its own mode's files
    (they are written with its `MmapedDict`: an upgrade that changes the format fails here)."""
    worker(tmp_path, os.getppid(), 4, load_s=2.0, answering=2)
    worker(tmp_path, 1, 3, load_s=0.5, answering=1)  # init: a process that runs
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert sample(text, "serving_requests_total", **LABELS, endpoint=ENDPOINT, status="200") == 7
    assert sample(text, "serving_request_rows_bucket", **LABELS, le="4.0") == 7
    assert rows_count(text) == 7
    assert "serving_requests_in_flight 3.0" in text
    assert sample(text, "serving_model_load_duration_seconds", **LABELS) == 2.0


def test_a_dead_workers_counts_stay_and_its_gauges_go(tmp_path: Path):
    here = worker(tmp_path, None, 1, load_s=0.5, answering=0)
    live = worker(tmp_path, os.getppid(), 2, load_s=2.0, answering=1)
    dead = [worker(tmp_path, dead_pid(), n, load_s=9.0, answering=4) for n in (3, 4)]
    (tmp_path / f"counter_{dead_pid()}-{0:016x}.tmp").write_text("{")  # cut short by death

    for scrape in range(2):
        text = (here if scrape == 0 else live).exposition().decode()
        assert (
            sample(text, "serving_requests_total", **LABELS, endpoint=ENDPOINT, status="200") == 10
        )
        assert sample(text, "serving_request_rows_sum", **LABELS) == 30
        assert sample(text, "serving_request_rows_bucket", **LABELS, le="4.0") == 10
        assert "serving_requests_in_flight 1.0" in text  # the dead workers' gauges do not count
        assert sample(text, "serving_model_load_duration_seconds", **LABELS) == 2.0
    for metrics in dead:  # their counts stay where they are; their gauges are gone
        process = metrics.shared.process  # type: ignore[union-attr]
        assert files_of(metrics) == [f"counter_{process}.db", f"histogram_{process}.db"]
    assert len(files_of(here)) == len(files_of(live)) == 4


def duration_sum(worker: Metrics) -> float:
    text = worker.exposition().decode()
    return sample(text, "serving_request_duration_seconds_sum", model="side_effects")


def test_every_worker_adds_the_sums_alike(tmp_path: Path):
    """Files are added in name order in every worker: one worker's total a hair below
    another's would read as a counter reset in Prometheus."""
    workers = [Metrics(SharedMetrics(tmp_path, pid=pid)) for pid in (None, os.getppid(), 1)]
    for metrics, took in zip(workers, (0.1, 0.2, 0.3), strict=True):
        metrics.observe_request("side_effects", "1", ENDPOINT, 200, took)
        metrics.flush()
    sums = {duration_sum(metrics) for metrics in workers for _ in range(2)}
    assert len(sums) == 1 and abs(sums.pop() - 0.6) < 1e-12


def test_alone_a_worker_writes_nothing_and_scrapes_only_itself(tmp_path: Path):
    metrics = Metrics(None)
    traffic(metrics, 2, load_s=0.1, answering=0)
    metrics.flush()
    assert list(tmp_path.iterdir()) == []
    text = metrics.exposition().decode()
    assert sample(text, "serving_request_rows_count", model="side_effects", version="1") == 2


def test_a_damaged_file_is_left_out_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    here = worker(tmp_path, None, 2, load_s=0.1, answering=0)
    other = worker(tmp_path, os.getppid(), 50, load_s=0.1, answering=0)
    written = {path.name: path.read_bytes() for path in tmp_path.glob("*.db")}
    for path in tmp_path.glob(f"*_{other.shared.process}.db"):  # type: ignore[union-attr]
        path.unlink()
    counter = next(v for k, v in written.items() if k.startswith("counter_"))
    damaged = {
        "not the format": b"{not json",
        "empty": b"",
        "cut short": counter[:40],
        "used beyond its size": b"\xff\xff\x00\x00" + counter[4:64],
    }
    for i, content in enumerate(damaged.values()):
        (tmp_path / f"counter_{i + 1}-{0:016x}.db").write_bytes(content)
    os.mkfifo(tmp_path / f"histogram_99-{0:016x}.db")  # reading it would block the scrape
    (tmp_path / f"counter_98-{0:016x}.tmp").write_bytes(counter)  # a write under way
    (tmp_path / "counter_report.db").write_bytes(counter)  # someone else's file
    with caplog.at_level(logging.WARNING, logger="serving"):
        first = here.exposition().decode()
        here.exposition()
    assert rows_count(first) == 2
    assert sample(first, "serving_requests_total", **LABELS, endpoint=ENDPOINT) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(damaged) + 1, warnings  # once each, not at every scrape
    assert all("is unreadable, left out of scrapes" in w for w in warnings)
    assert any("histogram_99" in w and "not a regular file" in w for w in warnings)


def test_without_its_folder_a_scrape_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = tmp_path / "metrics"
    cheap_metrics.prepare(folder)
    here = worker(folder, None, 10, load_s=0.1, answering=0)
    here.flush()
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING, logger="serving"):
        text = here.exposition().decode()
    assert "serving_request_rows_count" not in text  # nothing on disk: nothing shown
    assert "could not share this worker's metrics" in caplog.text
    assert f"metrics folder {folder} is unreadable" in caplog.text


def test_the_app_answers_a_scrape_beside_a_damaged_file(tmp_path: Path):
    (tmp_path / f"counter_7-{0:016x}.db").write_text("{not json")
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
        seen.append(rows_count(scraped))
    # a drop would read as a counter reset in Prometheus; b shows what a last showed
    assert seen == [11, 11, 31, 31, 51, 51]


def test_a_process_id_taken_over_keeps_the_old_files_counts_not_its_gauges(tmp_path: Path):
    here = Metrics(SharedMetrics(tmp_path))
    pid = os.getppid()  # a running process, as a new worker that got a dead one's id
    old = worker(tmp_path, pid, 5, load_s=7.0, answering=3)
    new = worker(tmp_path, pid, 1, load_s=0.2, answering=1)  # started later
    assert old.shared.process != new.shared.process  # type: ignore[union-attr]
    text = here.exposition().decode()
    assert rows_count(text) == 6
    assert "serving_requests_in_flight 1.0" in text
    assert sample(text, "serving_model_load_duration_seconds", **LABELS) == 0.2
    assert len(files_of(old)) == 2 and len(files_of(new)) == 4


def test_prepare_clears_a_previous_runs_files_and_explains_an_unusable_folder(tmp_path: Path):
    folder = tmp_path / "metrics"
    cheap_metrics.prepare(folder)
    previous = (
        f"counter_1-{1:016x}.db",
        f"histogram_1-{1:016x}.db",
        f"gauge_livesum_2-{2:016x}.db",
        f"gauge_livemax_2-{2:016x}.tmp",
    )
    for name in (*previous, "counter_report.db", "notes"):
        (folder / name).write_text("{}")
    cheap_metrics.prepare(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["counter_report.db", "notes"]
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"metrics folder {a_file / 'm'} cannot be used"):
        cheap_metrics.prepare(a_file / "m")


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
    while len(list(folder.glob("counter_*.db"))) < 2:
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
            answered = {p: predicted(p) for p in folder.glob("counter_*.db")}
            if len(answered) == 2 and min(answered.values()) > 0:
                break
        assert min(answered.values()) > 0, answered
        wait_for_total(server.url, sent)
        answered = {p: predicted(p) for p in folder.glob("counter_*.db")}
        assert sum(answered.values()) == sent
        pids = sorted(int(p.stem.split("_")[1].split("-")[0]) for p in answered)

        os.kill(pids[0], signal.SIGKILL)  # a worker dies; uvicorn starts another
        deadline = time.monotonic() + 60
        while len(list(folder.glob("counter_*.db"))) < 3:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        wait_for_total(server.url, sent)  # the dead worker's requests still count
        if not cheap_metrics.pid_alive(pids[0]):  # its gauges went with that scrape
            assert not list(folder.glob(f"gauge_*_{pids[0]}-*.db"))
        wait_for_total(server.url, sent)  # and count from there, whichever worker answers
        wait_for_total(server.url, sent)
    finally:
        server.stop()


def predicted(path: Path) -> float:
    """Requests answered by predict, from one worker's counter file."""
    return sum(
        s.value
        for metric in MultiProcessCollector.merge([str(path)])
        for s in metric.samples
        if s.name == "serving_requests_total" and s.labels["endpoint"] == ENDPOINT
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
        assert sum(predicted(p) for p in folder.glob("counter_*.db")) == 0
    finally:
        server.stop()
    assert sum(predicted(p) for p in folder.glob("counter_*.db")) == 12
