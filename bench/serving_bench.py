"""Serving benchmark: our endpoints against the HTTP floor, side by side, in one run.

    make bench-serving    # or: .venv/bin/python bench/serving_bench.py --duration 5 --repeats 3

Starts, each in its own process on 127.0.0.1 (one uvicorn worker, uvloop + httptools, no
access log): a raw ASGI app and a FastAPI endpoint that return a constant (the floor), and
`python -m serving` over a temporary repository holding `side_effects` and a wide model
(256 → 1024 → 1024 → 10). wrk (one thread) loads each at each concurrency; runs are
interleaved across repeats so that machine noise spreads evenly; the table shows medians and
the ratio to the FastAPI constant endpoint. Results replace the serving section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, Measurement, Process, machine, median, to_json, write_section, wrk
from bench.models import WIDE_FEATURES, make_wide_bundle


def make_repository(folder: Path) -> Path:
    """side_effects as committed, plus a wide classifier with random weights."""
    shutil.copytree(
        ROOT / "models" / "side_effects",
        folder / "side_effects",
        ignore=shutil.ignore_patterns("model.yaml"),
    )
    make_wide_bundle(folder / "wide")
    return folder


def targets() -> dict[str, tuple[str, str, bytes]]:
    """name → (server, path, JSON body)."""
    row = np.round(np.random.default_rng(0).normal(size=WIDE_FEATURES), 4).tolist()
    v2_tiny = {
        "inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [70.0]}]
    }
    v2_wide = {
        "inputs": [
            {"name": "features", "shape": [1, WIDE_FEATURES], "datatype": "FP32", "data": row}
        ]
    }
    return {
        "floor: raw ASGI constant": ("raw", "/", to_json({"instances": [{"age": 70}]})),
        "floor: FastAPI constant": ("fastapi", "/", to_json({"instances": [{"age": 70}]})),
        "v1 side_effects": (
            "serving",
            "/v1/models/side_effects:predict",
            to_json({"instances": [{"age": 70}]}),
        ),
        "v2 side_effects (JSON)": ("serving", "/v2/models/side_effects/infer", to_json(v2_tiny)),
        "v1 wide": ("serving", "/v1/models/wide:predict", to_json({"instances": [row]})),
        "v2 wide (JSON)": ("serving", "/v2/models/wide/infer", to_json(v2_wide)),
    }


def start_servers(repo: Path) -> dict[str, Process]:
    uvicorn = [
        sys.executable,
        "-m",
        "uvicorn",
        "--port",
        "{port}",
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]
    return {
        "raw": Process([*uvicorn, "bench.floor_apps:raw_app"], "/"),
        "fastapi": Process([*uvicorn, "bench.floor_apps:fastapi_app"], "/"),
        "serving": Process(
            [
                sys.executable,
                "-m",
                "serving",
                "--repo",
                str(repo),
                "--port",
                "{port}",
                "--log-level",
                "warning",
            ],
            "/v2/health/ready",
        ),
    }


def run(
    duration: float, repeats: int, concurrencies: list[int]
) -> dict[tuple[str, int], Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(make_repository(Path(tmp)))
        try:
            plan = targets()
            headers = {"Content-Type": "application/json"}
            for server, path, body in plan.values():  # warm up every route once
                wrk(servers[server].url + path, body, headers, 4, 1)
            samples: dict[tuple[str, int], list[Measurement]] = {}
            for repeat in range(repeats):
                for c in concurrencies:
                    for name, (server, path, body) in plan.items():
                        m = wrk(servers[server].url + path, body, headers, c, duration)
                        samples.setdefault((name, c), []).append(m)
                        print(
                            f"[{repeat + 1}/{repeats}] c={c:<3} {name:<28} {m.rps:>9.0f} req/s "
                            f"p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms",
                            flush=True,
                        )
        finally:
            for process in servers.values():
                process.stop()
    return {key: median(values) for key, values in samples.items()}


def table(results: dict[tuple[str, int], Measurement], concurrencies: list[int]) -> str:
    lines = [
        "| endpoint | c | req/s | p50 ms | p99 ms | vs FastAPI constant | vs raw ASGI | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in concurrencies:
        fastapi = results[("floor: FastAPI constant", c)].rps
        raw = results[("floor: raw ASGI constant", c)].rps
        for name in targets():
            m = results[(name, c)]
            lines.append(
                f"| {name} | {c} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
                f"{m.rps / fastapi:.2f}× | {m.rps / raw:.2f}× | {m.errors} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    results = run(args.duration, args.repeats, args.concurrency)
    command = (
        f"python bench/serving_bench.py --duration {args.duration:g} --repeats {args.repeats} "
        f"--concurrency {' '.join(map(str, args.concurrency))}"
    )
    text = f"""## Serving (HTTP)

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}.
One uvicorn worker per server, wrk with one thread and one row per request;
medians of {args.repeats} interleaved runs of {args.duration:g} s.
The wide model is 256 → 1024 → 1024 → 10 (softmax), random weights.

{table(results, args.concurrency)}
"""
    write_section("serving", text)
    print(text)


if __name__ == "__main__":
    main()
