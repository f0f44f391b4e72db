"""Build onnxruntime sessions with explicit providers and threads.

Two onnxruntime defaults hurt in production and are overridden here:
- `intra_op_num_threads` defaults to the *host's* core count, which oversubscribes a container
  limited to a few CPUs (or a Spark executor running several tasks). We default to the CPUs this
  process may really use (affinity and cgroup quota).
- Asking for CUDA where it cannot load silently falls back to the CPU. We refuse instead, unless
  the caller allowed the fallback.

What a GPU needs beyond that (its libraries, the errors that say what is missing) is in
`inference.gpu`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from inference.errors import BundleError, ProviderUnavailableError
from inference.gpu import (
    gpu_requirements,
    install_hint,
    load_gpu_libraries,
    provider_failure,
)

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = (PROVIDERS["cuda"], PROVIDERS["tensorrt"])


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a bundle. The defaults suit a CPU container."""

    providers: tuple[str, ...] = ("cpu",)
    """In order of preference: `cpu`, `cuda`, `tensorrt` (or onnxruntime's own names)."""
    allow_cpu_fallback: bool = False
    """Run on the CPU when a requested accelerator is unavailable, instead of failing."""
    intra_op_threads: int | None = None
    """Threads for one operator; None means the CPUs available to this process."""
    inter_op_threads: int = 1
    allow_spinning: bool = True
    """onnxruntime's worker threads spin between runs: lower latency, more CPU when idle."""
    device_id: int = 0
    """Which GPU a CUDA or TensorRT session runs on (a Spark task gets the one Spark gave it)."""
    allow_tf32: bool = False
    """Let CUDA multiply float32 matrices in TensorFloat-32 (Ampere and later GPUs): faster for
    large models, but scores then differ from the CPU's by up to ~1e-2 relative (measured on an
    H200 with iris). Off, so that one bundle answers the same on the GPU as on the CPU."""


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the smaller of its affinity set and its cgroup CPU quota
    (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(cgroup: Path) -> float | None:
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def check_provider_names(requested: Sequence[str]) -> list[str]:
    """onnxruntime's names for ours; an empty list or an unknown name is refused. Whether this
    install can run them is `resolve_providers`'s question."""
    if not requested:
        raise ProviderUnavailableError(
            "no execution provider requested; known: cpu, cuda, tensorrt"
        )
    full_names = []
    for name in requested:
        full = PROVIDERS.get(name.lower(), name)
        if full not in PROVIDERS.values():
            raise ProviderUnavailableError(
                f"unknown execution provider {name!r}; known: {', '.join(PROVIDERS)}"
            )
        full_names.append(full)
    return full_names


def resolve_providers(requested: Sequence[str], allow_cpu_fallback: bool) -> list[str]:
    """Map our provider names to onnxruntime's and check that this install has them."""
    available = ort.get_available_providers()
    chosen: list[str] = []
    for name, full in zip(requested, check_provider_names(requested), strict=True):
        if full in available:
            chosen.append(full)
        elif not allow_cpu_fallback:
            raise ProviderUnavailableError(
                f"execution provider {name!r} ({full}) is not available in this onnxruntime "
                f"install (available: {', '.join(available)}); {install_hint()}"
            )
        else:
            log.warning("execution provider %s unavailable; falling back to CPU", full)
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])
    if any(p in chosen for p in GPU_PROVIDERS):
        load_gpu_libraries()
    return chosen


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or available_cpus()
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's concern
    if not options.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def provider_options(provider: str, options: RuntimeOptions) -> dict[str, str]:
    """onnxruntime's options for one provider: float32 kept exact on CUDA unless TF32 is allowed."""
    chosen: dict[str, str] = {}
    if provider in GPU_PROVIDERS and options.device_id:  # onnxruntime warns at an explicit 0
        chosen["device_id"] = str(options.device_id)
    if provider == PROVIDERS["cuda"]:
        chosen["use_tf32"] = "1" if options.allow_tf32 else "0"
    return chosen


def build_session(model_path: Path, options: RuntimeOptions) -> ort.InferenceSession:
    """A session on the requested providers, refusing a silent fallback to the CPU."""
    providers = resolve_providers(options.providers, options.allow_cpu_fallback)
    printed = io.StringIO()  # onnxruntime prints a provider's failure, then retries on the CPU
    try:
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(
                str(model_path),
                sess_options=session_options(options),
                providers=providers,
                provider_options=[provider_options(p, options) for p in providers],
            )
    except Exception as e:  # onnxruntime raises its own untyped errors for a bad graph
        raise BundleError(f"{model_path}: onnxruntime cannot load this model: {e}") from e
    session.disable_fallback()  # a provider failing mid-run is an error, never a silent CPU run
    missing = [p for p in providers if p not in session.get_providers()]
    if missing:
        reason = provider_failure(printed.getvalue())
        if not options.allow_cpu_fallback:
            raise ProviderUnavailableError(
                f"{model_path}: onnxruntime could not start {', '.join(missing)} ({reason}); it "
                f"would have run on {', '.join(session.get_providers())}. {gpu_requirements()}"
            )
        log.warning("%s: %s did not start (%s); running on the CPU", model_path, missing, reason)
    return session
