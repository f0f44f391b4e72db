"""Our gRPC against KServe 0.21's gRPC server, side by side in one run: the same ONNX model
(side_effects), the same request, the same client (issue 27.3's peer check).

    .venv/bin/python bench/kserve_grpc_bench.py [--seconds 3] [--rounds 3] [--write]
    make bench-grpc-kserve          # the same, with --write

KServe is not a dependency of the project: the first run creates a venv of its own,
`bench/.venvs/kserve` (git-ignored; `--venv` puts it elsewhere), and installs into it
`kserve==0.21.*`, `onnxruntime` and `numpy` from PyPI (about 40 s, ~530 MB); later runs reuse
it. Then the bench starts two servers on 127.0.0.1, both pinned to the first CPU (the clients
to the second) where there are two or more:

- ours: `python -m serving --models side_effects --grpc-port P --intra-op-threads 1`;
- KServe: its `ModelServer` (REST and gRPC in one process, gRPC on `grpc_port`) with a small
  `kserve.Model` whose `predict` runs an onnxruntime session on `models/side_effects/1/model.onnx`
  (one thread, as ours) and answers the outputs ours answers by default, as raw bytes. KServe
  runs in its best configuration: no per-request latency log line, `KSERVE_LOGLEVEL=WARNING`
  (its gRPC interceptor logs every call at INFO otherwise).

Before timing, `tritonclient.grpc`'s `ModelInfer` asks both servers for several rows and every
output is compared with onnxruntime run directly (1e-5). Then, at each concurrency, each round
times three cases in a turning order, with grpc_bench's clients:

- `ours-grpc`, `kserve-grpc`: `ModelInfer` with `raw_input_contents` (tritonclient's default) from
  grpc.aio on one channel, N calls in flight, the same serialized bytes to both;
- `ours-http`: the same row as a v2 binary-tensor request from an asyncio HTTP client, the
  reference.

Tables show medians over rounds, the median of the per-round ratio ours/KServe, and the server
CPU per request; `--write` puts them in the serving-grpc-kserve section of bench/RESULTS.md.

    KServe side (run by the bench, in the KServe venv):
    bench/.venvs/kserve/bin/python bench/kserve_grpc_bench.py kserve-server MODEL OUTPUTS HTTP GRPC
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from bench.common import Measurement

# Only the standard library and numpy above this line: the KServe side imports this module too,
# in a venv without the project.
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "side_effects" / "1" / "model.onnx"
VENV = ROOT / "bench" / ".venvs" / "kserve"
REQUIREMENTS = ["kserve==0.21.*", "onnxruntime", "numpy"]
CASES = ("ours-grpc", "kserve-grpc", "ours-http")
CHECK_ROWS = np.array([[18.0], [42.0], [65.0], [80.0], [100.0]], np.float32)


# --- The KServe side ---------------------------------------------------------------------------


def serve_kserve(model_path: str, outputs: list[str], http_port: int, grpc_port: int) -> None:
    """Serve the ONNX model as `side_effects` from KServe's ModelServer (REST and gRPC)."""
    import kserve
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse
    from kserve.utils.numpy_codec import from_np_dtype

    class OnnxModel(kserve.Model):
        """A custom KServe model (KServe's documented way to serve your own runtime): `predict`
        runs one onnxruntime session on the request's inputs, as raw bytes both ways."""

        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(model_path, options, ["CPUExecutionProvider"])
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: Any = None) -> InferResponse:
            feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            names = [o.name for o in payload.request_outputs or []] or outputs
            answers = []
            for name, array in zip(names, self.session.run(names, feeds), strict=True):
                answer = InferOutput(name, list(array.shape), from_np_dtype(array.dtype))
                answer.set_data_from_numpy(array, binary_data=True)
                answers.append(answer)
            return InferResponse(payload.id, self.name, answers)

    model = OnnxModel("side_effects")
    model.load()
    server = kserve.ModelServer(
        http_port=http_port, grpc_port=grpc_port, enable_latency_logging=False
    )
    server.start([model])


# --- The bench side ----------------------------------------------------------------------------


def kserve_python(venv: Path) -> Path:
    """The KServe venv's python, created and installed on first use (kept while the
    requirements stay the same)."""
    python, stamp = venv / "bin" / "python", venv / ".installed"
    wanted = " ".join(REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {venv} and installing {wanted} (once; ~40 s)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", *REQUIREMENTS], check=True
    )
    stamp.write_text(wanted)
    return python


VERSIONS = (
    "import importlib.metadata as m; "
    "print(f\"KServe {m.version('kserve')} (grpcio {m.version('grpcio')})\")"
)


def kserve_version(python: Path) -> str:
    """KServe's version and its venv's grpcio, e.g. `KServe 0.21.0 (grpcio 1.85.4)`."""
    out = subprocess.run(
        [str(python), "-c", VERSIONS],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def start_kserve(
    python: Path, prefix: list[str], outputs: list[str], ports: tuple[int, int], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """KServe's server in its venv, ready when its `/v2/health/ready` answers 200; its log
    goes to `log`, shown if it never gets ready."""
    import httpx

    http_port, grpc_port = ports
    command = [
        *prefix,
        *(str(python), str(Path(__file__).resolve()), "kserve-server", str(MODEL)),
        *(",".join(outputs), str(http_port), str(grpc_port)),
    ]
    env = {**os.environ, "KSERVE_LOGLEVEL": "WARNING"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    process.wait(30)
    log.seek(0)
    raise RuntimeError(f"KServe never became ready:\n{log.read().decode(errors='replace')}")


def default_outputs(grpc_port: int) -> list[str]:
    """The outputs our server answers when a request names none."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    features = grpcclient.InferInput("features", [1, 1], "FP32")
    features.set_data_from_numpy(CHECK_ROWS[:1])
    response = client.infer("side_effects", [features]).get_response()
    client.close()
    return [output.name for output in response.outputs]


def check(grpc_ports: dict[str, int], outputs: list[str]) -> str:
    """tritonclient.grpc `ModelInfer` on every server, each output compared with onnxruntime
    run directly; raises on the first difference."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = dict(zip(outputs, session.run(outputs, {"features": CHECK_ROWS}), strict=True))
    for server, port in grpc_ports.items():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        features = grpcclient.InferInput("features", list(CHECK_ROWS.shape), "FP32")
        features.set_data_from_numpy(CHECK_ROWS)
        result = client.infer("side_effects", [features])
        client.close()
        for name, want in expected.items():
            got = result.as_numpy(name)
            if got is None or got.dtype != want.dtype or got.shape != want.shape:
                raise RuntimeError(f"{server}: output {name} is {got!r}, expected {want!r}")
            if not np.allclose(got, want, rtol=0, atol=1e-5):
                raise RuntimeError(f"{server}: output {name} differs: {got} against {want}")
    return (
        f"tritonclient.grpc `ModelInfer` on {len(CHECK_ROWS)} rows: both servers answered "
        f"{', '.join(outputs)} equal to onnxruntime run directly (atol 1e-5)"
    )


def run(seconds: float, rounds: int, concurrencies: list[int], venv: Path) -> str:
    import grpc

    from bench.common import free_port, machine
    from bench.grpc_bench import pinning

    python = kserve_python(venv)
    where = f"{machine()}, grpcio {grpc.__version__} (ours), {kserve_version(python)}"
    prefix, client_cpus = pinning()
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)
    ports = {"ours-http": free_port(), "ours-grpc": free_port(), "kserve-grpc": free_port()}
    load_before = os.getloadavg()[0]
    with serve_both(python, prefix, ports) as (pids, checked):
        results, cpu = measure(ports, pids, seconds, rounds, concurrencies)
    note = (
        f"{where}; {rounds} rounds of {seconds:g} s per case"
        + ("; servers on one CPU, clients on the other" if client_cpus is not None else "")
        + f"; host load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    return table(results, cpu, concurrencies, note, checked)


@contextmanager
def serve_both(
    python: Path, prefix: list[str], ports: dict[str, int]
) -> Iterator[tuple[dict[str, int], str]]:
    """Our server and KServe's, checked: the server pid of each case, and the check's line."""
    from bench.common import free_port
    from bench.grpc_bench import start_server

    ours = start_server(prefix, ports["ours-http"], ports["ours-grpc"])
    kserve: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryFile() as log:
            outputs = default_outputs(ports["ours-grpc"])
            kserve = start_kserve(python, prefix, outputs, (free_port(), ports["kserve-grpc"]), log)
            checked = check({"ours": ports["ours-grpc"], "KServe": ports["kserve-grpc"]}, outputs)
            print(checked, file=sys.stderr)
            pids = {"ours-grpc": ours.pid, "kserve-grpc": kserve.pid, "ours-http": ours.pid}
            yield pids, checked
    finally:
        for process in (ours, kserve):
            if process is not None:
                process.terminate()
                process.wait(30)


def measure(
    ports: dict[str, int],
    pids: dict[str, int],
    seconds: float,
    rounds: int,
    concurrencies: list[int],
) -> tuple[dict[tuple[str, int], list[Measurement]], dict[tuple[str, int], list[float]]]:
    """Every case at every concurrency, each round in a turning order: the measurements, and
    the server CPU per request (µs)."""
    from bench.grpc_bench import cpu_seconds, grpc_load, http_load

    loads: dict[str, Callable[[int, float], Measurement]] = {
        "ours-grpc": lambda c, s: asyncio.run(grpc_load(ports["ours-grpc"], c, s)),
        "kserve-grpc": lambda c, s: asyncio.run(grpc_load(ports["kserve-grpc"], c, s)),
        "ours-http": lambda c, s: asyncio.run(http_load(ports["ours-http"], c, s)),
    }
    for load in loads.values():  # warm every path up once
        load(4, 1.0)
    results: dict[tuple[str, int], list[Measurement]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for c in concurrencies:
            for name in CASES[r % 3 :] + CASES[: r % 3]:
                used = cpu_seconds(pids[name])
                m = loads[name](c, seconds)
                answered = max(1.0, m.rps * seconds)
                cpu.setdefault((name, c), []).append(
                    (cpu_seconds(pids[name]) - used) / answered * 1e6
                )
                results.setdefault((name, c), []).append(m)
    return results, cpu


def table(
    results: dict[tuple[str, int], list[Measurement]],
    cpu: dict[tuple[str, int], list[float]],
    concurrencies: list[int],
    where: str,
    checked: str,
) -> str:
    from bench.common import median

    lines = [
        "## Our gRPC against KServe 0.21's gRPC (bench/kserve_grpc_bench.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {where}, medians; side_effects, one row per request, "
        "the same grpc.aio client and bytes for both gRPC servers. "
        f"Command: `{command()}`. {checked}.",
        "",
        "| case | "
        + " | ".join(f"c={c}: req/s (p50 / p99 ms), server CPU per request" for c in concurrencies)
        + " |",
        "| --- |" + " --- |" * len(concurrencies),
    ]
    for name in CASES:
        cells = []
        for c in concurrencies:
            m = median(results[(name, c)])
            cells.append(
                f"{m.rps:,.0f} ({m.p50_ms:.2f} / {m.p99_ms:.2f}), "
                f"{statistics.median(cpu[(name, c)]):.0f} µs"
                + (f", {m.errors} errors" if m.errors else "")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = []
    for c in concurrencies:
        per_round = [
            o.rps / k.rps
            for o, k in zip(results[("ours-grpc", c)], results[("kserve-grpc", c)], strict=True)
        ]
        ratios.append(
            f"c={c}: {statistics.median(per_round):.2f}× "
            f"(rounds {', '.join(f'{x:.2f}' for x in per_round)})"
        )
    lines += [
        "",
        "ours-grpc / kserve-grpc, req/s, median of the per-round ratios: "
        + "; ".join(ratios)
        + ". Server CPU per request is the server process's user + system time over a case, "
        "per request answered: it does not depend on how fast the client is.",
    ]
    return "\n".join(lines)


def command() -> str:
    """This run's command line, as RESULTS.md shows it."""
    return " ".join([".venv/bin/python", "bench/kserve_grpc_bench.py", *sys.argv[1:]])


def main() -> None:
    if sys.argv[1:2] == ["kserve-server"]:
        # Positional only: KServe's ModelServer parses sys.argv at import for its own flags.
        model_path, outputs, http_port, grpc_port = sys.argv[2:6]
        serve_kserve(model_path, outputs.split(","), int(http_port), int(grpc_port))
        return
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--venv", type=Path, default=VENV, help="the KServe venv (cached)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    text = run(args.seconds, args.rounds, concurrencies, args.venv.resolve())
    print(text)
    if args.write:
        from bench.common import write_section

        write_section("serving-grpc-kserve", text)


if __name__ == "__main__":
    main()
