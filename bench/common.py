"""Shared benchmark plumbing: free ports, server processes, wrk runs, medians, RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"

LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  local io_errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status, io_errors))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server subprocess on 127.0.0.1, ready when `ready_path` answers 200; started in `cwd`
    (the checkout whose packages `python -m` imports first)."""

    def __init__(
        self,
        args: list[str],
        ready_path: str,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [a.replace("{port}", str(self.port)) for a in args]
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                method = httpx.get if ready_path.startswith("/v2/health") else httpx.post
                if method(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{' '.join(command)} never became ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> Measurement:
    """One wrk run (one thread, so that the server keeps the other core)."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.replace("{body}", lua_bytes(body)).replace("{headers}", header_lines))
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    requests, duration_us, p50, p99, status_errors, io_errors = map(int, match.groups())
    return Measurement(
        requests / (duration_us / 1e6), p50 / 1000, p99 / 1000, status_errors + io_errors
    )


def lua_bytes(data: bytes) -> str:
    """A Lua string literal holding exactly these bytes (binary tensors included)."""
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def median(values: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(m.rps for m in values),
        statistics.median(m.p50_ms for m in values),
        statistics.median(m.p99_ms for m in values),
        sum(m.errors for m in values),
    )


def machine() -> str:
    import numpy
    import onnxruntime

    cpus = len(os.sched_getaffinity(0))
    processor = cpu_model() or platform.processor() or platform.machine()
    return (
        f"{cpus} CPUs ({processor}), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}"
    )


def cpu_model() -> str | None:
    """The processor's name (Linux): runs on an Intel and an AMD host of the same size differ
    (the wide model's one-row run, for one), so a table says which it came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_section(name: str, text: str) -> None:
    """Replace one section of bench/RESULTS.md, keeping the others."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    block = f"{start}\n{text.strip()}\n{end}"
    if start in current:
        current = re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S
        )
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)


def to_json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
