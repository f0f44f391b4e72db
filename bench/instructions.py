"""Instructions per request inside the app, counted by callgrind: for changes of a few µs.

    .venv/bin/python bench/instructions.py              # needs valgrind (apt-get install valgrind)
    .venv/bin/python bench/instructions.py --requests 500 v2-side_effects fastapi

Wall-clock timings of one request drift by up to 2x between runs on a small VM, so a change of
a few µs cannot be judged by them; instruction counts repeat within 0.5%. Each case runs the
ASGI app in a loop without sockets (no uvicorn, no kernel): one client's requests, one after
the other, on uvloop, inside one `functools.reduce` call; callgrind counts only what runs
inside it (`--toggle-collect=functools_reduce`), so start-up, model loads and warm-up are left
out.
Under valgrind a model's warm-up measures runs ~50x slower, so the app is built with a high
`inline_max_us`, to run on the event loop as it does at full speed. Fewer instructions is not
always less time (onnxruntime's C++ runs at fewer instructions per cycle than CPython's loop):
confirm a change with `bench/serving_bench.py`. Results replace the instructions section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, machine, to_json, write_section
from bench.serving_bench import make_repository, v2_binary, v2_body

ROW = [0.01 * i for i in range(256)]
V1_ONE = to_json({"instances": [{"age": 70}]})
BINARY, BINARY_HEADERS = v2_binary(ROW)
CASES: dict[str, tuple[str, bytes]] = {
    "fastapi": ("/", V1_ONE),
    "v1-side_effects": ("/v1/models/side_effects:predict", V1_ONE),
    "v1-side_effects-batched": ("/v1/models/side_effects:predict", V1_ONE),
    "v2-side_effects": ("/v2/models/side_effects/infer", v2_body([70.0])),
    "v1-wide": ("/v1/models/wide:predict", to_json({"instances": [ROW]})),
    "v2-wide": ("/v2/models/wide/infer", v2_body(ROW)),
    "v2-wide-binary": ("/v2/models/wide/infer", BINARY),
}
DESCRIPTIONS = {
    "fastapi": "FastAPI endpoint returning a constant (bench/floor_apps.py)",
    "v1-side_effects": "v1 predict, side_effects, one row",
    "v1-side_effects-batched": "the same, adaptive batching on (one client: nothing to merge)",
    "v2-side_effects": "v2 infer (JSON), side_effects, one row",
    "v1-wide": "v1 predict, wide model, one row of 256",
    "v2-wide": "v2 infer (JSON), wide model, one row of 256",
    "v2-wide-binary": "v2 infer (binary tensor), wide model, one row of 256",
}


def count(case: str, repo: Path, requests: int) -> None:
    """The measured part (run under callgrind by `main`)."""
    from bench.floor_apps import fastapi_app
    from serving.http.app import create_app
    from serving.ops.settings import Settings

    path, body = CASES[case]
    batching = {"max_batch_size": 64} if case.endswith("-batched") else {}
    ours = create_app(
        Settings.load(
            repo=str(repo), log_level="warning", inline_max_us=1e9, intra_op_threads=1, **batching
        ),
        tune_gc=True,  # as `python -m serving` does
    )
    app: Any = fastapi_app if case == "fastapi" else ours
    extra = BINARY_HEADERS if body is BINARY else {"Content-Type": "application/json"}
    headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    headers.append((b"content-length", b"%d" % len(body)))
    scope = {
        "type": "http", "method": "POST", "path": path, "headers": headers,
        "query_string": b"", "root_path": "", "app": app,
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def answer(n: int) -> None:
        """n requests one after the other: a lone client, without sockets. A request that
        never waits runs through without the loop; one that does (the batcher's turn of the
        loop) costs its turn, as in the server."""
        for _ in range(n):
            await app(dict(scope), receive, send)

    loop = uvloop.new_event_loop()  # as the server's
    lifespan = nullcontext() if app is fastapi_app else ours.router.lifespan_context(ours)
    try:
        loop.run_until_complete(lifespan.__aenter__())
        while app is ours and not ours.dataplane.ready:
            loop.run_until_complete(asyncio.sleep(0.05))
        loop.run_until_complete(answer(20))  # first requests build caches
        functools.reduce(lambda _, __: loop.run_until_complete(answer(requests)), [0], None)
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
    finally:
        loop.close()
    if set(statuses) != {200}:
        raise RuntimeError(f"{case}: statuses {sorted(set(statuses))}, expected 200 only")


def callgrind(case: str, repo: Path, requests: int, code: Path = ROOT) -> int:
    """Instructions per request of one case; `code`: another checkout, counted with its own
    copy of this script (which imports that checkout's packages)."""
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        "--toggle-collect=functools_reduce", "--callgrind-out-file=/dev/null",
        sys.executable, str(code / "bench" / "instructions.py"), "--measure", case,
        "--repo", str(repo), "--requests", str(requests),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=code, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{case}: callgrind failed:\n{done.stderr[-2000:]}")
    return round(int(found.group(1)) / requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"some of: {', '.join(CASES)} (default: all)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        count(args.measure, args.repo, args.requests)
        return
    cases = args.cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as folder:
        repo = make_repository(Path(folder))
        counts = {}
        for case in cases:
            counts[case] = callgrind(case, repo, args.requests)
            print(f"{case:18} {counts[case]:>10,} instructions per request", flush=True)
    base = counts.get("fastapi")
    rows = "\n".join(
        f"| {DESCRIPTIONS[c]} | {n / 1000:,.0f}k | " + (f"{n / base:.2f}× |" if base else " |")
        for c, n in counts.items()
    )
    command = " ".join(["python bench/instructions.py", f"--requests {args.requests}", *args.cases])
    text = f"""## Instructions per request (callgrind)

`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}.
The ASGI app called in a loop, no sockets; counts of the requests alone, averaged over
{args.requests}. Fewer instructions is not always less time: confirm with the serving benchmark.

| request | instructions | vs FastAPI constant |
| --- | --- | --- |
{rows}
"""
    write_section("instructions", text)
    print(text)


if __name__ == "__main__":
    main()
