"""`python -m serving --repo models`: serve every model of a repository over HTTP.

Every flag is also a `SERVING_*` env var and a key of the `--settings-file`. A setting that
cannot work (an unknown provider, CUDA where it is absent without `--allow-cpu-fallback`, a
missing repository) stops the start with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from inference import ProviderUnavailableError
from inference.errors import describe_problems
from inference.runtime import resolve_providers
from serving.core.repository import model_names
from serving.http import connections
from serving.http.app import create_app
from serving.ops import cheap_metrics, logs
from serving.ops.settings import Settings
from serving.process import listener

log = logging.getLogger("serving")


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    """The flags given, by setting name: one flag per field of `Settings`, made from the field
    (so that a new setting is a flag without another line here, and `--help` lists them all).
    Values stay strings for pydantic to check, as it checks env vars and the settings file."""
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n")[0])
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help = first_sentence(field.description) + shown(default)
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.annotation is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help)
        elif choices:
            p.add_argument(flag, choices=choices, help=help)
        else:
            metavar = "N|auto" if name == "workers" else name.upper()
            p.add_argument(flag, metavar=metavar, help=help)
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


def shown(default: Any) -> str:
    if default is None or default == []:  # the docstring says what happens then
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if isinstance(default, list):
        return f" (default: {','.join(default)})"
    return f" (default: {default})"


def first_sentence(text: str | None) -> str:
    """A setting's docstring up to its first full stop, on one line (the rest is for the docs)."""
    words = " ".join((text or "").split())
    end = words.find(". ")
    return (words if end < 0 else words[: end + 1]).rstrip(".")


def check(settings: Settings) -> None:
    """Fail fast on settings that cannot work, before binding the port (with several workers,
    the metrics folder is checked once the port is bound: see `run_workers`)."""
    resolve_providers(tuple(settings.providers), settings.allow_cpu_fallback)
    if not settings.repo.is_dir():
        raise ValueError(f"model repository {settings.repo} is not a folder")
    missing = [m for m in settings.models if not (settings.repo / m).is_dir()]
    if missing:
        raise ValueError(f"model(s) {', '.join(missing)} are not in the repository {settings.repo}")
    if not settings.models and not settings.allow_empty and not model_names(settings.repo):
        raise ValueError(
            f"model repository {settings.repo} holds no model folder: put a model in "
            f"{settings.repo / '<name>' / '1' / 'model.onnx'} (or pass --allow-empty)"
        )
    if settings.metrics_dir is not None and settings.workers == 1:
        cheap_metrics.prepare(settings.metrics_dir)
    if settings.grpc_port is not None:
        check_grpc_port(settings.host, settings.grpc_port)


def check_grpc_port(host: str, port: int) -> None:
    """A gRPC port in use is one line before any model loads, as the HTTP port is (grpcio's
    own bind fails later, inside the app's startup)."""
    try:
        listener.bind(host, port, reuse_port=False).close()
    except OSError as e:
        where = listener.address(host, port)
        hint = "; stop what holds it, or pass another --grpc-port"
        raise ValueError(f"cannot listen for gRPC on {where}: {e.strerror or e}{hint}") from e


def export_to_env(settings: Settings) -> None:
    """Worker processes rebuild the settings from the environment (see create_app_from_env)."""
    for key, value in settings.model_dump(exclude_unset=False).items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        os.environ[f"SERVING_{key.upper()}"] = (
            ",".join(value) if isinstance(value, list) else str(value)
        )


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load(**parse_args(argv))
        check(settings)
    except ValidationError as e:
        print(f"error: invalid settings: {describe_problems(e.errors())}", file=sys.stderr)
        return 2
    except (ValueError, ProviderUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json, settings.access_log)
    log.info(
        "serving %s on http://%s:%d with providers %s: %d worker process(es), "
        "%d onnxruntime thread(s) per session",
        settings.repo,
        settings.host,
        settings.port,
        ",".join(settings.providers),
        settings.workers,
        settings.session_threads,
    )
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "http": connections.protocol(settings),
        "ws": "none",  # no WebSocket routes: an Upgrade request is answered as plain HTTP
        "log_level": settings.log_level,
    }
    if settings.workers == 1:
        return run_one(settings, common)
    made = None
    if settings.metrics_dir is None:  # the workers' scrapes need one to share their metrics
        made = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
        settings = settings.model_copy(update={"metrics_dir": made})
    try:
        export_to_env(settings)
        return run_workers(settings, common)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def listen(settings: Settings, reuse_port: bool) -> socket.socket | None:
    """The bound socket, or None after a one-line error: before any model loads, so that a port
    in use is the first and only thing the log says."""
    try:
        return listener.bind(settings.host, settings.port, reuse_port)
    except OSError as e:
        where = listener.address(settings.host, settings.port)
        hint = "; stop what holds it, or pass another --port" if e.errno == errno.EADDRINUSE else ""
        print(f"error: cannot listen on {where}: {e.strerror or e}{hint}", file=sys.stderr)
        return None


def run_one(settings: Settings, common: dict[str, Any]) -> int:
    """One process, as `uvicorn.run` would run it, on a socket bound before the app is built."""
    sock = listen(settings, reuse_port=False)
    if sock is None:
        return 2
    with sock:
        server = uvicorn.Server(uvicorn.Config(create_app(settings, tune_gc=True), **common))
        server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


def run_workers(settings: Settings, common: dict[str, Any]) -> int:
    """uvicorn's supervisor over `settings.workers` processes, listening as
    serving/process/listener.py says (what `uvicorn.run(..., workers=N)` does, with the socket
    of our choice). The metrics folder is cleared once the port is ours: a start refused for a
    port in use must not clear the files of the server that holds it."""
    config = uvicorn.Config(
        "serving.http.app:create_worker_app", factory=True, workers=settings.workers, **common
    )
    sock = listen(settings, settings.reuse_port)
    if sock is None:
        return 2
    try:
        if settings.metrics_dir is not None:
            cheap_metrics.prepare(settings.metrics_dir)
        if isinstance(sock, listener.PerWorkerSocket):
            log.info("each worker listens on a socket of its own; the kernel spreads connections")
        else:
            log.info("the workers share one listening socket")
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
    except ValueError as e:  # the metrics folder
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        sock.close()
    # a worker that could not start stops the supervisor (uvicorn keeps it in the list)
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


if __name__ == "__main__":
    sys.exit(main())
