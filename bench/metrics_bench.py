"""The service's hand-written metrics against prometheus_client's, side by side in one run.

    .venv/bin/python bench/metrics_bench.py                  # wrk and valgrind (apt-get install)
    .venv/bin/python bench/metrics_bench.py --repeats 4 --duration 3 --requests 300

Four variants of the `Metrics` facade (serving/ops/metrics.py), the same metric names, labels
and buckets, the same cached label look-ups:
- `baseline`: the hand-written metrics of a commit (`--baseline`, default 11660aa: 978 lines in
  three modules), `git archive`d into a temporary folder and run from there;
- `ours`: HEAD with this tree's metrics modules (a snapshot taken at the start, so that
  edits under way elsewhere in the tree stay out of the run);
- `plain`: prometheus_client's `Counter`, `Histogram` and `Gauge`, in memory;
- `multiprocess`: the same classes with `PROMETHEUS_MULTIPROC_DIR` set, as `--workers N` would
  run them (every observation written to the process's memory-mapped files).

Each variant is `python -m serving --models side_effects` (one uvicorn worker); `plain` and
`multiprocess` start through this script (`--serve`), which puts their class where
`create_app` finds `Metrics`: nothing in the service selects it. Each round loads v1
`:predict` and v2 `infer` at each concurrency on the four servers one after the other, the
order rotated from round to round; ratios are taken within a round, tables show medians over
rounds. Then callgrind counts each variant's instructions per request as bench/instructions.py
does (its `count`: the app called in a loop without sockets; `baseline` by its own copy).
Results replace the metrics section of bench/RESULTS.md (`--write`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, Measurement, Process, machine, median, to_json, write_section, wrk
from bench.instructions import callgrind as instructions_callgrind
from bench.serving_ab import Checkout, extract
from bench.serving_bench import make_repository, our_server, v2_body

VARIANTS = ("baseline", "ours", "plain", "multiprocess")
BASELINE = "11660aa"
"""The last commit with the hand-written metrics in three modules."""
LOADS = {
    "v1 :predict": ("/v1/models/side_effects:predict", "v1-side_effects"),
    "v2 infer (JSON)": ("/v2/models/side_effects/infer", "v2-side_effects"),
}
"""Load name → (path, bench/instructions.py's case)."""
LOSS_LIMIT = 0.05
"""prometheus_client replaces the hand-written code when it loses at most this (issue 27)."""


def prometheus_metrics() -> type:
    """The facade on prometheus_client's own metric classes (imported here: `multiprocess`
    must set its environment before prometheus_client is first imported)."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
        values,
    )
    from prometheus_client import multiprocess as mp

    from serving.core.batching import BatchObserver
    from serving.ops import metrics as today

    multiprocess = values.ValueClass is not values.MutexValue

    class PrometheusMetrics:
        def __init__(self, shared: Any = None) -> None:
            self.shared = shared
            self.registry = CollectorRegistry()
            r = self.registry
            lat, rows = today.LATENCY_BUCKETS, today.ROW_BUCKETS
            model = ["model", "version"]
            self.requests = Counter(
                "serving_requests", "HTTP requests", [*model, "endpoint", "status"], registry=r
            )
            self.request_seconds = Histogram(
                "serving_request_duration_seconds",
                "Time to answer a request, end to end",
                [*model, "endpoint"],
                buckets=lat,
                registry=r,
            )
            self.inference_seconds = Histogram(
                "serving_inference_duration_seconds",
                "Time in onnxruntime session.run",
                model,
                buckets=lat,
                registry=r,
            )
            self.rows = Histogram(
                "serving_request_rows", "Rows per request", model, buckets=rows, registry=r
            )
            self.batch_rows = Histogram(
                "serving_batch_rows", "Rows per merged run", model, buckets=rows, registry=r
            )
            self.batch_requests = Histogram(
                "serving_batch_requests",
                "Requests per merged run",
                model,
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                registry=r,
            )
            self.queue_seconds = Histogram(
                "serving_queue_duration_seconds",
                "Time in the batcher's queue",
                model,
                buckets=(0.00005, 0.0001, 0.00025, *lat),
                registry=r,
            )
            self.answering = 0
            self.in_flight = Gauge(
                "serving_requests_in_flight",
                "Requests being answered",
                registry=r,
                multiprocess_mode="livesum",
            )
            if not multiprocess:
                self.in_flight.set_function(lambda: self.answering)
            self.load_seconds = Gauge(
                "serving_model_load_duration_seconds",
                "Time to load a model version",
                model,
                registry=r,
                multiprocess_mode="livemax",
            )
            self._children: dict[tuple[int, str, int], Any] = {}
            self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

        def observe_inference(self, model: str, version: int, seconds: float) -> None:
            self._child(self.inference_seconds, model, version).observe(seconds)

        def observe_request_rows(self, model: str, version: int, rows: int) -> None:
            self._child(self.rows, model, version).observe(rows)

        def batch_observer(self, model: str, version: int) -> BatchObserver:
            rows = self._child(self.batch_rows, model, version)
            requests = self._child(self.batch_requests, model, version)

            def batch(n_rows: int, n_requests: int) -> None:
                rows.observe(n_rows)
                requests.observe(n_requests)

            queued = self._child(self.queue_seconds, model, version).observe
            return BatchObserver(batch=batch, queued=queued)

        def observe_request(
            self, model: str, version: str, endpoint: str, status: int, seconds: float
        ) -> None:
            key = (model, version, endpoint, status)
            children = self._request_children.get(key)
            if children is None:
                children = self._request_children[key] = (
                    self.requests.labels(model, version, endpoint, str(status)),
                    self.request_seconds.labels(model, version, endpoint),
                )
            children[0].inc()
            children[1].observe(seconds)

        def _child(self, metric: Any, model: str, version: int) -> Any:
            key = (id(metric), model, version)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = metric.labels(model, str(version))
            return child

        def model_loaded(self, model: str, version: int, seconds: float) -> None:
            self.load_seconds.labels(model, str(version)).set(seconds)

        def exposition(self) -> bytes:
            if not multiprocess:
                return bytes(generate_latest(self.registry))
            self.in_flight.set(self.answering)
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))

        def flush(self) -> None:
            if multiprocess:
                self.in_flight.set(self.answering)

        async def share(self, every_s: float) -> None:
            while True:
                self.flush()
                await asyncio.sleep(every_s)

    return PrometheusMetrics


def use_variant(variant: str) -> None:
    """Put the variant's facade where `create_app` finds `Metrics` (`ours`: as it is)."""
    if variant == "ours":
        return
    if (variant == "multiprocess") != bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
        sys.exit(f"{variant}: PROMETHEUS_MULTIPROC_DIR must be set for multiprocess only")
    import serving.http.app

    setattr(serving.http.app, "Metrics", prometheus_metrics())  # noqa: B010 (a module's name)


def serve(variant: str, argv: list[str]) -> None:
    """`python -m serving`, with the variant's metrics."""
    use_variant(variant)
    from serving.__main__ import main

    sys.exit(main(argv))


METRICS_FILES = ("serving/ops/metrics.py", "serving/ops/cheap_metrics.py")
"""What `ours` takes from this working tree; the rest of its code is HEAD's."""


def snapshot(folder: Path) -> Checkout:
    """HEAD with this tree's metrics modules and this script: what `ours`, `plain` and
    `multiprocess` run, fixed for the whole run (others' edits in progress elsewhere in the
    tree stay out of the comparison)."""
    head = extract("HEAD", folder)
    for name in (*METRICS_FILES, "bench/metrics_bench.py"):
        shutil.copy2(ROOT / name, folder / name)
    command = ["git", "status", "--porcelain", "--", *METRICS_FILES]
    changed = subprocess.run(command, cwd=ROOT, capture_output=True, check=True).stdout
    return Checkout(folder, head.commit + (" +this tree's metrics" if changed else ""))


def server(variant: str, repo: Path, folder: Path, codes: dict[str, Checkout]) -> Process:
    flags = ["--repo", str(repo), "--models", "side_effects", "--port", "{port}"]
    if variant == "baseline":
        code = codes["baseline"]
        return our_server(repo, "--models", "side_effects", env=code.env, cwd=code.root)
    code = codes["ours"]
    env = dict(code.env)
    if variant == "multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "prometheus")
        (folder / "prometheus").mkdir(parents=True)
    return Process(
        [
            *(sys.executable, str(code.root / "bench" / "metrics_bench.py"), "--serve", variant),
            *flags,
            *("--log-level", "warning"),
        ],
        "/v2/health/ready",
        env=env,
        cwd=code.root,
    )


def bodies() -> dict[str, bytes]:
    v1 = to_json({"instances": [{"age": 70}]})
    return {"v1 :predict": v1, "v2 infer (JSON)": v2_body([70.0])}


Rounds = list[dict[tuple[str, str, int], Measurement]]


def measure(
    servers: dict[str, Process], duration: float, repeats: int, concurrencies: list[int]
) -> Rounds:
    headers = {"Content-Type": "application/json"}
    payload = bodies()
    for variant, process in servers.items():  # warm up, and check the metrics answer
        for load, (path, _) in LOADS.items():
            wrk(process.url + path, payload[load], headers, 4, 1)
        check_scrape(variant, process)
    rounds: Rounds = []
    for index in range(repeats):
        order = VARIANTS[index % 4 :] + VARIANTS[: index % 4]
        samples: dict[tuple[str, str, int], Measurement] = {}
        for c in concurrencies:
            for load, (path, _) in LOADS.items():
                for variant in order:
                    m = wrk(servers[variant].url + path, payload[load], headers, c, duration)
                    if m.errors:
                        sys.exit(f"{variant} {load} c={c}: {m.errors} errors; invalid")
                    samples[(variant, load, c)] = m
                    print(
                        f"[{index + 1}/{repeats}] c={c:<3} {load:<16} {variant:<12} "
                        f"{m.rps:>8.0f} req/s p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms",
                        flush=True,
                    )
        rounds.append(samples)
    return rounds


def check_scrape(variant: str, process: Process) -> None:
    """Each variant counts the warm-up's requests under the same names (or the run is void)."""
    import httpx

    text = httpx.get(process.url + "/metrics", timeout=10).text
    found = re.search(r'serving_requests_total\{[^}]*status="200"[^}]*\} (\S+)', text)
    if found is None or float(found.group(1)) <= 0:
        sys.exit(f"{variant}: /metrics shows no serving_requests_total:\n{text[:2000]}")


def count(variant: str, case: str, repo: Path, requests: int) -> None:
    """Under callgrind: bench/instructions.py's loop, with the variant's metrics."""
    use_variant(variant)
    from bench.instructions import count as instructions_count

    instructions_count(case, repo, requests)


def callgrind(
    variant: str, case: str, repo: Path, requests: int, *, folder: Path, codes: dict[str, Checkout]
) -> int:
    if variant == "baseline":
        return instructions_callgrind(case, repo, requests, code=codes["baseline"].root)
    code = codes["ours"].root
    env = {**os.environ, **codes["ours"].env}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if variant == "multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=folder)
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        "--toggle-collect=functools_reduce", "--callgrind-out-file=/dev/null",
        sys.executable, str(code / "bench" / "metrics_bench.py"), "--count", variant, case,
        "--repo", str(repo), "--requests", str(requests),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=code, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{variant} {case}: callgrind failed:\n{done.stderr[-2000:]}")
    return round(int(found.group(1)) / requests)


def count_all(
    repo: Path, requests: int, folder: Path, codes: dict[str, Checkout]
) -> dict[tuple[str, str], int]:
    """Instructions per request by (variant, load), two callgrind runs at a time."""
    with ThreadPoolExecutor(2) as pool:
        futures = {
            (variant, load): pool.submit(
                callgrind, variant, case, repo, requests, folder=folder, codes=codes
            )
            for load, (_, case) in LOADS.items()
            for variant in VARIANTS
        }
        return {key: future.result() for key, future in futures.items()}


def ratio(rounds: Rounds, variant: str, other: str, load: str, c: int) -> float:
    """The median over rounds of variant's req/s over other's in the same round."""
    return statistics.median(r[(variant, load, c)].rps / r[(other, load, c)].rps for r in rounds)


def throughput_table(rounds: Rounds, concurrencies: list[int]) -> tuple[str, dict[str, float]]:
    """The table, and each variant's worst ratio to `baseline` over the loads."""
    lines = [
        "| load | c | metrics | req/s | p50 ms | p99 ms | vs baseline | vs ours |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    worst = dict.fromkeys(VARIANTS, float("inf"))
    for c in concurrencies:
        for load in LOADS:
            for variant in VARIANTS:
                m = median([r[(variant, load, c)] for r in rounds])
                versus = ratio(rounds, variant, "baseline", load, c)
                worst[variant] = min(worst[variant], versus)
                lines.append(
                    f"| {load} | {c} | {variant} | {m.rps:,.0f} | {m.p50_ms:.2f} | "
                    f"{m.p99_ms:.2f} | {versus:.3f}× | "
                    f"{ratio(rounds, variant, 'ours', load, c):.3f}× |"
                )
    return "\n".join(lines), worst


def instructions_table(counts: dict[tuple[str, str], int] | None, requests: int) -> str:
    if counts is None:
        return "(No instruction counts: valgrind is not installed, or `--requests 0`.)"
    lines = [
        f"Instructions per request (bench/instructions.py's loop under callgrind, {requests} "
        "requests, one client, no sockets):",
        "",
        "| load | metrics | instructions | vs baseline |",
        "| --- | --- | --- | --- |",
    ]
    for load in LOADS:
        base = counts[("baseline", load)]
        for variant in VARIANTS:
            n = counts[(variant, load)]
            lines.append(
                f"| {load} | {variant} | {n / 1000:,.1f}k | {(n - base) / 1000:+,.1f}k "
                f"({n / base - 1:+.1%}) |"
            )
    return "\n".join(lines)


def report(args: argparse.Namespace, rounds: Rounds, counts: Any, load: str, ours: Checkout) -> str:
    table, worst = throughput_table(rounds, args.concurrency)
    verdicts = ", ".join(
        f"{v} {worst[v]:.3f}× ({'within' if worst[v] >= 1 - LOSS_LIMIT else 'over'} 5%)"
        for v in VARIANTS[1:]
    )
    command = (
        f"python bench/metrics_bench.py --duration {args.duration:g} --repeats {args.repeats} "
        f"--concurrency {' '.join(map(str, args.concurrency))} --requests {args.requests} "
        f"--baseline {args.baseline}"
    )
    return f"""## Metrics: hand-written against prometheus_client (bench/metrics_bench.py)

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}; load average before the run
{load}. One uvicorn worker per server, `--models side_effects`, one row per request; wrk with
one thread; {args.repeats} rounds of {args.duration:g} s runs, the four variants one after
the other in an order rotated each round; medians over rounds, "vs" the median of ratios taken
within a round. Baseline: {args.baseline}; ours: {ours.commit}. Worst ratio to the
baseline: {verdicts}.

{table}

{instructions_table(counts, args.requests)}
"""


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=4, help="rounds (4: each order once)")
    parser.add_argument("--baseline", default=BASELINE, help="the hand-written metrics' commit")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--requests", type=int, default=300, help="per count (0: none)")
    parser.add_argument("--write", action="store_true", help="replace the RESULTS.md section")
    parser.add_argument("--count", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        variant, case = args.count
        count(variant, case, args.repo, args.requests)
        return
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        codes = {
            "baseline": extract(args.baseline, Path(tmp) / "baseline"),
            "ours": snapshot(Path(tmp) / "ours"),
        }
        for checkout in codes.values():
            checkout.check_imports()
        repo = make_repository(Path(tmp) / "repo", wide=False)
        servers: dict[str, Process] = {}
        try:
            for variant in VARIANTS:
                servers[variant] = server(variant, repo, Path(tmp) / variant, codes)
            rounds = measure(servers, args.duration, args.repeats, args.concurrency)
        finally:
            for process in servers.values():
                process.stop()
        counts = None
        if args.requests and shutil.which("valgrind"):  # after the load, not to take its CPU
            counts = count_all(repo, args.requests, Path(tmp), codes)
        text = report(args, rounds, counts, load, codes["ours"])
    if args.write:
        write_section("metrics", text)
    print(text)


if __name__ == "__main__":
    main()
