"""Service settings: defaults < settings file (YAML or JSON) < `SERVING_*` env vars < CLI flags.

Built once at the entry point and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inference import available_cpus
from inference.yaml_files import YamlError, load_yaml
from serving.ops import tracing

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERVING_", extra="forbid", use_attribute_docstrings=True
    )

    repo: Path = Path("models")
    """The model repository: one folder per model, numbered bundle versions inside."""
    models: Annotated[list[str], NoDecode] = []
    """Serve only these models (comma-separated in env); empty means every model in `repo`."""
    allow_empty: bool = False
    """Start on a repository that holds no model folder (refused otherwise: a wrong `repo`
    would else serve nothing and still report ready)."""
    host: str = "127.0.0.1"
    """Address to bind; `0.0.0.0` in a container."""
    port: int = Field(default=8080, ge=1, le=65535)
    """The HTTP port."""
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    """Also serve the Open Inference Protocol over gRPC on this port (same host, same models);
    off unless set."""
    workers: int = Field(default=1, ge=1)
    """uvicorn worker processes, each with its own sessions; `auto`: one per CPU this container
    may use (the measured best for throughput, at the cost of a copy of every model each)."""
    reuse_port: bool = True
    """With `workers` > 1 on Linux, each worker listens on a socket of its own (SO_REUSEPORT) and
    the kernel spreads new connections over them; off, the workers share one socket and the
    first to wake takes every connection waiting (serving/process/listener.py has the
    measurements)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe log lines written."""
    log_json: bool = False
    """One JSON object per log line (for Kubernetes log collectors)."""
    access_log: bool = False
    """Log every request (the metrics count them anyway)."""
    tracing: Literal["auto", "off", "otlp", "console"] = Field("auto", validate_default=True)
    """OpenTelemetry traces: `otlp` sends them where the standard `OTEL_EXPORTER_OTLP_*`
    variables say, `console` prints them; `auto` (the default) follows `OTEL_TRACES_EXPORTER`,
    else turns on `otlp` when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, else stays off. Needs the
    `tracing` extra (docs/serving.md, Tracing)."""
    metrics_dir: Path | None = None
    """Where worker processes share their metrics, so that a scrape of any one sees them all;
    `python -m serving` makes a temporary folder when `workers` > 1 and none is set, and clears
    this one's metric files (prometheus_client's multiprocess format) at start."""
    metrics_flush_s: float = Field(default=1.0, gt=0)
    """How often each worker writes its metrics to `metrics_dir` (a scrape may miss another
    worker's last this-many seconds, and a later one shows them)."""
    settings_file: Path | None = None
    """A YAML or JSON file of these settings; env vars and flags override it."""

    providers: Annotated[list[str], NoDecode] = ["cpu"]
    """Execution providers in order of preference: cpu, cuda, tensorrt (comma-separated in env)."""
    allow_cpu_fallback: bool = False
    """Serve on the CPU when a requested accelerator is unavailable, instead of failing."""
    intra_op_threads: int | None = Field(default=None, ge=1)
    """onnxruntime threads per session; default: the CPUs this container may use, shared
    between the `workers` (at least one each)."""

    @property
    def session_threads(self) -> int:
        """`intra_op_threads`, or the CPUs shared between the worker processes: N processes
        with all CPUs' threads each would oversubscribe the machine N times over."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, available_cpus() // self.workers)

    allow_spinning: bool = False
    """onnxruntime's threads spin between runs: lower latency on an idle machine, but they take
    CPU from the event loop when it is busy (off by default: measured in bench/RESULTS.md)."""
    allow_tf32: bool = False
    """CUDA may multiply in TensorFloat-32: faster for large models, less exact (see
    `inference.RuntimeOptions.allow_tf32`); off so that the GPU answers as the CPU does."""

    api_key: SecretStr | None = None
    """When set, every route but the health probes needs `Authorization: Bearer <key>` or
    `X-API-Key: <key>`."""
    max_body_bytes: int = Field(default=64 * MIB, ge=1)
    """Larger request bodies are refused with 413."""
    max_json_body_bytes: int = Field(default=8 * MIB, ge=1)
    """Larger JSON bodies (v1; v2 JSON, or a binary request's JSON header; decompressed) are
    refused with 413: decoding JSON takes up to 32x its size in memory, binary tensors about
    their size, so large batches travel as binary tensors, up to `max_body_bytes`."""
    max_batch_rows: int = Field(default=100_000, ge=1)
    """More rows in one request are refused with 413."""
    inference_workers: int = Field(default=1, ge=1)
    """Session runs at a time off the event loop; each uses `intra_op_threads` threads."""
    inline_max_us: float = Field(default=500.0, ge=0)
    """Batches whose measured cost is below this run on the event loop (no thread hand-off);
    0 sends every batch to the executor."""
    max_batch_size: int = Field(default=0, ge=0)
    """Adaptive batching: most rows merged into one run; 0 (the default) turns it off. A model's
    `model.yaml` may override it (`serving: batching: {max_batch_size: ...}`)."""
    max_delay_us: int = Field(default=0, ge=0)
    """Adaptive batching: longest a request waits for others to join its batch, in µs; at 0 it
    never waits, and only requests that arrive while a batch runs merge."""
    request_timeout_s: float = Field(default=30.0, gt=0)
    """An inference running longer answers 504."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish; one not answered by then
    gets 503."""

    header_timeout_s: float = Field(default=10.0, gt=0)
    """A request's headers must be complete this long after the connection opened, or after
    the first byte that follows the previous answer: past it, 408 (or a plain close when
    nothing came) (serving/http/connections.py)."""
    body_timeout_s: float = Field(default=60.0, gt=0)
    """A request's body must be complete this long after its headers: past it, 408."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    """An idle connection between requests is closed after this long (uvicorn's
    `timeout_keep_alive`)."""
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """A request line and headers larger than this are refused with 431."""
    max_headers: int = Field(default=100, ge=1)
    """More request headers than this are refused with 431."""
    max_connections: int | None = Field(default=None, ge=1)
    """Open connections per worker process; a new one beyond is answered 503 with Retry-After
    and closed. Default: three quarters of the process's open-file limit, at most 4096."""

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return available_cpus()
            if not text.isdigit():
                raise ValueError(f"{value!r} is neither a number of processes nor auto")
        return value

    @field_validator("tracing")
    @classmethod
    def _tracing_installed(cls, value: str) -> str:
        tracing.check(value, os.environ)  # one line at start, not a traceback at the first span
        return value

    @field_validator("providers", "models", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from the file named by the overrides or env, then env, then overrides."""
        first = cls(**overrides)
        if first.settings_file is None:
            return first
        from_file = read_settings_file(first.settings_file)
        from_env = cls.model_validate({})  # env only, to see which keys the env set
        merged = {**from_file, **from_env.model_dump(exclude_unset=True), **overrides}
        return cls.model_validate(merged)


def read_settings_file(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path)  # JSON is YAML too
    except YamlError as e:  # its message starts with the path
        raise ValueError(f"settings file {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"settings file {path}: expected a mapping of setting names to values")
    return data
