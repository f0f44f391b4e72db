"""gRPC against HTTP v2 on one server, side by side in one run: the tabular model, one row per
request (issue 27.3's speed check).

    .venv/bin/python bench/grpc_bench.py [--seconds 5] [--rounds 3] [--write]

Starts one `python -m serving --models side_effects --grpc-port P --intra-op-threads 1` on
127.0.0.1 (pinned to the first CPU where there are two or more, the clients to the second) and
loads it, at each concurrency, with the same request three ways, the order turning each round:

- `http-wrk`: v2 binary tensors (as tritonclient sends them) from wrk, one thread: the HTTP
  path's own ceiling.
- `http-py`: the same bytes from an asyncio client in Python (keep-alive connections, one
  request in flight on each), so that both protocols pay a Python client's cost.
- `grpc-py`: `ModelInfer` with `raw_input_contents` (tritonclient's default) from grpc.aio on
  one channel, N calls in flight, messages serialized once (bytes in, bytes out).

`--idle` measures instead what gRPC on but idle costs HTTP v2 (the image turns it on).
Tables show medians over rounds; `--write` puts them in the serving-grpc section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Measurement, free_port, machine, median, write_section, wrk
from bench.serving_bench import v2_binary

METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROW = np.array([[42.0]], np.float32)


def pinning() -> tuple[list[str], set[int] | None]:
    """A `taskset` prefix for the server and the CPUs for the clients, on two CPUs or more."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], None
    return ["taskset", "-c", str(cpus[0])], set(cpus[1:])


def start_server(
    prefix: list[str], http_port: int, grpc_port: int | None
) -> subprocess.Popen[bytes]:
    import httpx

    command = [
        *prefix,
        *(sys.executable, "-m", "serving", "--repo", str(ROOT / "models")),
        *("--models", "side_effects", "--port", str(http_port)),
        *("--intra-op-threads", "1", "--log-level", "warning"),
        *(("--grpc-port", str(grpc_port)) if grpc_port is not None else ()),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the server never became ready")


def grpc_request() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="side_effects")
    request.inputs.add(name="features", datatype="FP32", shape=list(ROW.shape))
    request.raw_input_contents.append(ROW.tobytes())
    return bytes(request.SerializeToString())


async def grpc_load(port: int, concurrency: int, seconds: float) -> Measurement:
    import grpc

    body = grpc_request()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        await call(body)  # connect before the clock starts

        async def once() -> None:
            await call(body)

        return await _load(once, concurrency, seconds)


async def http_load(port: int, concurrency: int, seconds: float) -> Measurement:
    body, headers = v2_binary(ROW[0].tolist())
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /v2/models/side_effects/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(concurrency):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def once() -> None:
        reader, writer = await pool.get()
        writer.write(request)
        header = await reader.readuntil(b"\r\n\r\n")
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(header.decode(errors="replace"))
        length = next(
            int(line.split(b":")[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        pool.put_nowait((reader, writer))

    try:
        return await _load(once, concurrency, seconds)
    finally:
        while not pool.empty():
            pool.get_nowait()[1].close()


async def _load(once: object, concurrency: int, seconds: float) -> Measurement:
    """`concurrency` loops calling `once` for `seconds`: requests/s and latency percentiles."""
    assert callable(once)
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                await once()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies) or [0.0]
    return Measurement(
        len(latencies) / elapsed,
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        errors,
    )


def run(seconds: float, rounds: int, concurrencies: list[int]) -> str:
    import grpc

    where = f"{machine()}, grpcio {grpc.__version__}"
    prefix, client_cpus = pinning()
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # wrk, started from here, inherits it
    http_port, grpc_port = free_port(), free_port()
    server = start_server(prefix, http_port, grpc_port)
    body, headers = v2_binary(ROW[0].tolist())
    url = f"http://127.0.0.1:{http_port}/v2/models/side_effects/infer"
    kinds = {
        "http-wrk": lambda c: wrk(url, body, headers, c, seconds),
        "http-py": lambda c: asyncio.run(http_load(http_port, c, seconds)),
        "grpc-py": lambda c: asyncio.run(grpc_load(grpc_port, c, seconds)),
    }
    results: dict[tuple[str, int], list[Measurement]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        for kind in kinds.values():  # warm up every path once
            kind(4)
        for r in range(rounds):
            order = list(kinds)[r % 3 :] + list(kinds)[: r % 3]
            for c in concurrencies:
                for name in order:
                    used = cpu_seconds(server.pid)
                    m = kinds[name](c)
                    per_request = (cpu_seconds(server.pid) - used) / max(1, m.rps * seconds)
                    results.setdefault((name, c), []).append(m)
                    cpu.setdefault((name, c), []).append(per_request * 1e6)
    finally:
        server.terminate()
        server.wait(30)
    return table(
        results,
        cpu,
        concurrencies,
        f"{where}; {rounds} rounds of {seconds:g} s",
        pinned=client_cpus is not None,
    )


def cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(
    results: dict[tuple[str, int], list[Measurement]],
    cpu: dict[tuple[str, int], list[float]],
    concurrencies: list[int],
    where: str,
    pinned: bool,
) -> str:
    lines = [
        "## gRPC against HTTP v2 (bench/grpc_bench.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {where}, medians; one server process serving both, "
        "side_effects, one row per request"
        + ("; server on one CPU, clients on the other" if pinned else "")
        + ". Command: `.venv/bin/python bench/grpc_bench.py`.",
        "",
        "| client | "
        + " | ".join(f"c={c}: req/s (p50 / p99 ms), server CPU per request" for c in concurrencies)
        + " |",
        "| --- |" + " --- |" * len(concurrencies),
    ]
    for name in ("http-wrk", "http-py", "grpc-py"):
        cells = []
        for c in concurrencies:
            m = median(results[(name, c)])
            ratio = m.rps / statistics.median(x.rps for x in results[("http-py", c)])
            server_us = statistics.median(cpu[(name, c)])
            cells.append(
                f"{m.rps:,.0f} ({m.p50_ms:.2f} / {m.p99_ms:.2f}) {ratio:.2f}×, {server_us:.0f} µs"
                + (f", {m.errors} errors" if m.errors else "")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios are to `http-py` (both protocols from a Python asyncio client). Server CPU per "
        "request (user + system time of the server process over the run, per request answered) "
        "does not depend on how fast the client is.",
    ]
    return "\n".join(lines)


def idle_cost(seconds: float, rounds: int, concurrency: int = 16) -> str:
    """HTTP v2 (wrk) on a server with gRPC on but idle against one without, alternating."""
    prefix, client_cpus = pinning()
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)
    body, headers = v2_binary(ROW[0].tolist())
    servers = {}
    try:
        for grpc_on in (False, True):
            port = free_port()
            servers[grpc_on] = port, start_server(prefix, port, free_port() if grpc_on else None)
        rps: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for grpc_on in (False, True) if r % 2 == 0 else (True, False):
                url = f"http://127.0.0.1:{servers[grpc_on][0]}/v2/models/side_effects/infer"
                rps[grpc_on].append(wrk(url, body, headers, concurrency, seconds).rps)
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait(30)
    off, on = (statistics.median(rps[k]) for k in (False, True))
    return (
        f"HTTP v2 (wrk, c={concurrency}, {rounds} alternating rounds of {seconds:g} s) with "
        f"gRPC on and idle: {on:,.0f} req/s against {off:,.0f} without ({on / off:.2f}×). "
        "Command: `.venv/bin/python bench/grpc_bench.py --idle`."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument(
        "--idle", action="store_true", help="only: what an idle gRPC server costs HTTP"
    )
    args = parser.parse_args()
    if args.idle:
        print(idle_cost(args.seconds, max(args.rounds, 4)))
        return
    text = run(args.seconds, args.rounds, [int(c) for c in args.concurrency.split(",")])
    print(text)
    if args.write:
        write_section("serving-grpc", text)


if __name__ == "__main__":
    main()
