"""Any-model serving, side by side in one run: an image model over v2 binary, and the tabular
hot path of this working tree against an older commit's code (issue 22's speed check).

    make bench-serving-ab    # or: .venv/bin/python bench/serving_ab.py

Starts, each in its own process on 127.0.0.1 (one uvicorn worker, as bench/serving_bench.py):
the FastAPI constant endpoint (the floor); `python -m serving --models image` of this tree over
a bare image model (a small CNN, `[N,3,32,32]` FP32 → 10 logits, exported by torch as
`1/model.onnx`, no metadata.json), batching off and on; and `python -m serving --models
side_effects` twice: this tree, and the baseline commit extracted by `git archive` into a
temporary folder and started there with PYTHONPATH set to it (where `python -m` imports from
is checked before the run).

Each round loads everything at each concurrency, the two codes' runs of one load next to each
other, the baseline first in even rounds and second in odd ones; ratios are taken within a
round (to that round's constant endpoint, current to baseline) and the tables show medians
over rounds. Then, with valgrind, bench/instructions.py counts each code's instructions per
tabular request, which machine noise does not move. Results replace the serving-ab section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, Measurement, Process, machine, median, to_json, write_section, wrk
from bench.instructions import callgrind
from bench.models import IMAGE_SHAPE, make_image_model
from bench.serving_bench import (
    JSON,
    SERVERS,
    Target,
    make_repository,
    ms,
    our_server,
    uvicorn_floor,
    v2_binary_tensor,
    v2_body,
)

BASELINE = "b5bdb26"
"""The last tabular-only commit (before named tensors and bare graphs in the core)."""
LOSS_LIMIT = 0.05
"""The tabular hot path may lose at most this share of its throughput (issue 22)."""
CONSTANT = "floor: FastAPI constant"
IMAGE = ["v2 image (binary)", "v2 image (binary), batched"]
TABULAR = {
    "v1 side_effects": ("/v1/models/side_effects:predict", to_json({"instances": [{"age": 70}]})),
    "v2 side_effects (JSON)": ("/v2/models/side_effects/infer", v2_body([70.0])),
}
CASES = {"v1 side_effects": "v1-side_effects", "v2 side_effects (JSON)": "v2-side_effects"}
"""bench/instructions.py's case for each tabular load."""
CODES = ("baseline", "current")


@dataclass(frozen=True)
class Checkout:
    """A tree of the project's code, the commit it holds, and where it imports from."""

    root: Path
    commit: str

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.root)}

    def check_imports(self) -> None:
        """Stop unless Python started here (as its servers are) imports this tree's packages."""
        script = "import inference, serving; print(inference.__file__); print(serving.__file__)"
        files = subprocess.run(
            [sys.executable, "-c", script],
            cwd=self.root,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not all(Path(f).is_relative_to(self.root) for f in files):
            sys.exit(f"{self.root} imports {files}, not its own packages: the A/B is invalid")


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def working_tree() -> Checkout:
    """This tree; its commit marked `+changes` where inference/ or serving/ differ from it."""
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "inference", "serving"):
        commit += " +changes"
    return Checkout(ROOT, commit)


def extract(ref: str, folder: Path) -> Checkout:
    """The commit's files (no .git; nothing registered among this repository's worktrees)."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return Checkout(folder, git("rev-parse", "--short", ref))


def plan() -> dict[str, Target]:
    """The loads by name; a tabular load's server is `tabular@<code>`."""
    image = np.random.default_rng(0).normal(size=(1, *IMAGE_SHAPE)).astype(np.float32)
    body, headers = v2_binary_tensor("image", image)
    targets = {
        CONSTANT: Target("fastapi", "/", TABULAR["v1 side_effects"][1], JSON),
        IMAGE[0]: Target("image", "/v2/models/image/infer", body, headers),
        IMAGE[1]: Target("image-batched", "/v2/models/image/infer", body, headers),
    }
    for load, (path, payload) in TABULAR.items():
        for code in CODES:
            targets[f"{load} @{code}"] = Target(f"tabular@{code}", path, payload, JSON)
    return targets


def start(repo: Path, codes: dict[str, Checkout]) -> dict[str, Process]:
    servers = {
        "fastapi": uvicorn_floor("bench.floor_apps:fastapi_app"),
        "image": our_server(repo, "--models", "image"),
        "image-batched": our_server(repo, "--models", "image", *SERVERS["batched"]),
    }
    for code, checkout in codes.items():
        servers[f"tabular@{code}"] = our_server(
            repo, "--models", "side_effects", env=checkout.env, cwd=checkout.root
        )
    return servers


def round_order(round_index: int) -> list[str]:
    """The constant and image loads, then each tabular load's two codes next to each other,
    the baseline first in even rounds and second in odd ones."""
    codes = CODES if round_index % 2 == 0 else CODES[::-1]
    return [CONSTANT, *IMAGE, *(f"{load} @{code}" for load in TABULAR for code in codes)]


Rounds = list[dict[tuple[str, int], Measurement]]


def measure(
    servers: dict[str, Process],
    targets: dict[str, Target],
    duration: float,
    repeats: int,
    concurrencies: list[int],
) -> Rounds:
    for t in targets.values():  # warm up every route once
        wrk(servers[t.server].url + t.path, t.body, t.headers, 4, 1)
    rounds: Rounds = []
    for index in range(repeats):
        samples: dict[tuple[str, int], Measurement] = {}
        for c in concurrencies:
            for name in round_order(index):
                t = targets[name]
                m = wrk(servers[t.server].url + t.path, t.body, t.headers, c, duration)
                if m.errors:
                    sys.exit(f"{name} at c={c}: {m.errors} errors; the benchmark is invalid")
                samples[(name, c)] = m
                print(
                    f"[{index + 1}/{repeats}] c={c:<3} {name:<38} {m.rps:>9.0f} req/s "
                    f"p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms",
                    flush=True,
                )
        rounds.append(samples)
    return rounds


def count_instructions(codes: dict[str, Checkout], repo: Path, requests: int) -> dict[str, int]:
    """Instructions per request, by `<load> @<code>`, two callgrind runs at a time (each
    code counted by its own copy of bench/instructions.py, which imports that code)."""
    with ThreadPoolExecutor(2) as pool:
        futures = {
            f"{load} @{code}": pool.submit(callgrind, case, repo, requests, code=codes[code].root)
            for load, case in CASES.items()
            for code in CODES
        }
        return {name: future.result() for name, future in futures.items()}


def ratio(rounds: Rounds, name: str, other: str, c: int) -> float:
    """The median over rounds of name's req/s over other's in the same round."""
    return statistics.median(r[(name, c)].rps / r[(other, c)].rps for r in rounds)


def row(rounds: Rounds, name: str, c: int) -> str:
    m = median([r[(name, c)] for r in rounds])
    versus = ratio(rounds, name, CONSTANT, c)
    return f"{m.rps:,.0f} | {ms(m.p50_ms)} | {ms(m.p99_ms)} | {versus:.2f}×"


def image_table(rounds: Rounds, concurrencies: list[int]) -> str:
    lines = [
        "| endpoint | c | req/s | p50 ms | p99 ms | vs FastAPI constant |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in concurrencies:
        lines += [f"| {name} | {c} | {row(rounds, name, c)} |" for name in (CONSTANT, *IMAGE)]
    return "\n".join(lines)


def ab_table(
    rounds: Rounds, concurrencies: list[int], codes: dict[str, Checkout]
) -> tuple[str, float]:
    """The table, and the worst ratio of current to baseline over the loads."""
    lines = [
        "| load | c | code | req/s | p50 ms | p99 ms | vs FastAPI constant | vs baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    worst = float("inf")
    for c in concurrencies:
        lines.append(f"| {CONSTANT} | {c} |  | {row(rounds, CONSTANT, c)} |  |")
        for load in TABULAR:
            versus = ratio(rounds, f"{load} @current", f"{load} @baseline", c)
            worst = min(worst, versus)
            for code, cell in (("baseline", ""), ("current", f"{versus:.3f}×")):
                lines.append(
                    f"| {load} | {c} | {code} {codes[code].commit} | "
                    f"{row(rounds, f'{load} @{code}', c)} | {cell} |"
                )
    return "\n".join(lines), worst


def measured_part(root: Path) -> str | None:
    """What bench/instructions.py runs under callgrind (its cases and `count`), as written in
    a checkout: each code is counted with its own copy, so the two must agree."""
    path = root / "bench" / "instructions.py"
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^CASES.*?^def callgrind", text, flags=re.S | re.M)
    return found.group(0) if found else None


def instructions_table(counts: dict[str, int] | None, requests: int, same_script: bool) -> str:
    if counts is None:
        return "(No instruction counts: valgrind is not installed, or `--requests 0`.)"
    script = "the same cases and loop" if same_script else "**a loop that differs**"
    lines = [
        f"Instructions per request (`bench/instructions.py`: the app called in-process, "
        f"{requests} requests, no sockets; each code counted by its own copy, with {script}):",
        "",
        "| load | baseline | current | current vs baseline |",
        "| --- | --- | --- | --- |",
    ]
    for load in CASES:
        base, ours = counts[f"{load} @baseline"], counts[f"{load} @current"]
        lines.append(f"| {load} | {base / 1000:,.1f}k | {ours / 1000:,.1f}k | {ours / base:.3f}× |")
    return "\n".join(lines)


def report(
    args: argparse.Namespace,
    rounds: Rounds,
    codes: dict[str, Checkout],
    counts: dict[str, int] | None,
) -> str:
    table, worst = ab_table(rounds, args.concurrency, codes)
    verdict = "within" if worst >= 1 - LOSS_LIMIT else "**over**"
    same_script = measured_part(codes["baseline"].root) == measured_part(ROOT)
    command = (
        f"python bench/serving_ab.py --duration {args.duration:g} --repeats {args.repeats} "
        f"--concurrency {' '.join(map(str, args.concurrency))} --baseline {args.baseline} "
        f"--requests {args.requests}"
    )
    return f"""## Serving: an image model, and this code against {args.baseline}

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}.
One uvicorn worker per server (default settings), wrk with one thread; {args.repeats} rounds of
{args.duration:g} s runs, every load at every concurrency in each round; medians over rounds,
ratios taken within a round. "batched": `--max-batch-size 64 --max-delay-us 0`.

### An image model over v2 binary

A small CNN with random weights (conv 3→16, pool, conv 16→32, pool, linear 2048→10), exported
by `torch.onnx.export(dynamo=False)` with a dynamic batch axis as a bare `image/1/model.onnx`;
one `[1,3,32,32]` FP32 image per request (12,288 bytes after the JSON header), JSON response.

{image_table(rounds, args.concurrency)}

### The tabular hot path: current against baseline

side_effects, one row per request, `--models side_effects`. Baseline: {codes["baseline"].commit}
(`git archive` into a temporary folder, its servers started there); current: this working tree,
{codes["current"].commit}. "vs baseline": the median over rounds of current's req/s over the
baseline's in the same round (their runs are next to each other, in alternating order).
Worst: {worst:.3f}×, {verdict} the {LOSS_LIMIT:.0%} the hot path may lose.

{table}

{instructions_table(counts, args.requests, same_script)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=6, help="rounds (even: each order alike)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per instruction count (0: none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        codes = {
            "baseline": extract(args.baseline, Path(tmp) / "baseline"),
            "current": working_tree(),
        }
        for checkout in codes.values():
            checkout.check_imports()
        repo = make_repository(Path(tmp) / "repo", wide=False)
        make_image_model(repo / "image")
        servers = start(repo, codes)
        try:
            rounds = measure(servers, plan(), args.duration, args.repeats, args.concurrency)
        finally:
            for process in servers.values():
                process.stop()
        counts = None
        if args.requests and shutil.which("valgrind"):  # after the load, not to take its CPU
            tabular = make_repository(Path(tmp) / "tabular", wide=False)
            counts = count_instructions(codes, tabular, args.requests)
        text = report(args, rounds, codes, counts)
    write_section("serving-ab", text)
    print(text)


if __name__ == "__main__":
    main()
