"""GPU benchmark: the same bundle on onnxruntime's CPU and CUDA providers, side by side, in one run.

    python bench/gpu_bench.py --duration 5 --repeats 3    # needs the `gpu` extra and a GPU

Two parts, each comparing CPU and CUDA on one machine:
1. The model alone (`Model.predict`, validation included) on the wide model (256 → 1024 → 1024
   → 10) and side_effects, at several batch sizes: median time per call and rows per second.
2. The service over HTTP (one uvicorn worker each, wrk with one thread, one row per request):
   the wide model, JSON and binary, unbatched and batched (`--max-batch-size 64 --max-delay-us
   0`), on `--providers cpu` and `--providers cuda`, interleaved across repeats; medians.

The results replace the serving-gpu section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import inference
from bench.common import Measurement, machine, write_section
from bench.models import WIDE_FEATURES
from bench.serving_bench import (
    JSON,
    SERVERS,
    Target,
    make_repository,
    measure,
    our_server,
    v2_binary,
    v2_body,
)

PROVIDERS = ("cpu", "cuda")
BATCH_SIZES = (1, 64, 1024, 8192)


def model_alone(repo: Path, repeats: int) -> str:
    """Median seconds per `predict` call for each model, provider and batch size."""
    rng = np.random.default_rng(0)
    variants = {
        "cpu": inference.RuntimeOptions(providers=("cpu",)),
        "cuda": inference.RuntimeOptions(providers=("cuda",)),
        "tf32": inference.RuntimeOptions(providers=("cuda",), allow_tf32=True),
    }
    lines = [
        "| model | rows per call | CPU ms | CUDA ms | CUDA rows/s | CUDA vs CPU | CUDA, TF32 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, width in (("wide", WIDE_FEATURES), ("side_effects", 1)):
        models = {v: inference.load(repo / name, options=o) for v, o in variants.items()}
        for rows in BATCH_SIZES:
            batch = rng.normal(size=(rows, width)).astype(np.float32)
            ms = {v: _time_calls(m, batch, repeats) * 1e3 for v, m in models.items()}
            lines.append(
                f"| {name} | {rows:,} | {ms['cpu']:.3f} | {ms['cuda']:.3f} "
                f"| {rows / ms['cuda'] * 1e3:,.0f} | {ms['cpu'] / ms['cuda']:.1f}× "
                f"| {ms['tf32']:.3f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def _time_calls(model: inference.Model, batch: np.ndarray, repeats: int) -> float:
    for _ in range(5):  # warm up: CUDA allocates and tunes on the first calls of a shape
        model.predict(batch)
    calls = max(5, 20 * repeats)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def http_plan() -> dict[str, Target]:
    row = np.round(np.random.default_rng(0).normal(size=WIDE_FEATURES), 4).tolist()
    binary, binary_headers = v2_binary(row)
    plan = {}
    for provider in PROVIDERS:
        for batching, label in (("serving", ""), ("batched", ", batched")):
            server = f"{provider} {batching}"
            plan[f"v2 wide (JSON), {provider}{label}"] = Target(
                server, "/v2/models/wide/infer", v2_body(row), JSON
            )
            plan[f"v2 wide (binary), {provider}{label}"] = Target(
                server, "/v2/models/wide/infer", binary, binary_headers
            )
    return plan


def http(repo: Path, duration: float, repeats: int, concurrencies: list[int]) -> str:
    servers = {
        f"{provider} {batching}": our_server(repo, "--providers", provider, *SERVERS[batching])
        for provider in PROVIDERS
        for batching in ("serving", "batched")
    }
    plan = http_plan()
    try:
        results = measure(servers, plan, duration, repeats, concurrencies)
    finally:
        for server in servers.values():
            server.stop()
    return http_table(results, plan, concurrencies)


def http_table(
    results: dict[tuple[str, int], Measurement], plan: dict[str, Target], concurrencies: list[int]
) -> str:
    lines = [
        "| endpoint | c | req/s | p50 ms | p99 ms | vs CPU, same batching |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in concurrencies:
        for name in plan:
            m = results[(name, c)]
            cpu = results[(name.replace(", cuda", ", cpu"), c)]
            versus = f"{m.rps / cpu.rps:.2f}×" if ", cuda" in name else ""
            lines.append(
                f"| {name} | {c} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {versus} |"
            )
    return "\n".join(lines)


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().replace("\n", "; ")
    except (OSError, subprocess.CalledProcessError):
        return "an NVIDIA GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    command = (
        f"python bench/gpu_bench.py --duration {args.duration:g} --repeats {args.repeats} "
        f"--concurrency {' '.join(map(str, args.concurrency))}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repository(Path(tmp))
        alone = model_alone(repo, args.repeats)
        served = http(repo, args.duration, args.repeats, args.concurrency)
    text = f"""## Serving on a GPU (CUDA provider)

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {gpu_name()}; {machine()}.
CPU rows use every CPU of that machine (onnxruntime's default threads, no spinning).

### The model alone (`Model.predict`, median of the timed calls)

{alone}

### Over HTTP

One row per request; medians of {args.repeats} interleaved runs of {args.duration:g} s.

{served}
"""
    write_section("serving-gpu", text)
    print(text)


if __name__ == "__main__":
    main()
