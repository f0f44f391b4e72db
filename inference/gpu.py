"""What running on a GPU takes beyond a session's providers: CUDA's libraries loaded, and
errors that say what is missing in words a user can act on.

The `gpu` extra brings CUDA and cuDNN as NVIDIA's pip wheels, which the dynamic loader does not
search, so onnxruntime's own `preload_dlls` loads them before the first CUDA session; no
`LD_LIBRARY_PATH` is needed. Where a provider cannot start, onnxruntime prints an "EP Error"
block and retries on the CPU: the cause in that block goes into our one-line error instead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
from importlib import metadata

import onnxruntime as ort

log = logging.getLogger(__name__)


@functools.cache
def load_gpu_libraries() -> None:
    """Load CUDA and cuDNN from NVIDIA's pip wheels (`onnxruntime-gpu[cuda,cudnn]`), once.

    Libraries that are not there are left to the system's loader paths (a CUDA base image);
    if they are missing there too, the session's own check names the provider that did not
    start. onnxruntime prints what it could not load: that goes to the debug log instead.
    """
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu 1.21 and later
    if preload is None:
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except Exception as e:  # a loader error here only means: rely on the system paths
            log.debug("onnxruntime.preload_dlls failed: %s", e)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", " ".join(printed.getvalue().split()))


def install_hint() -> str:
    """How to get a GPU build, naming the usual mistake: both builds installed at once."""
    installed = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            metadata.version(name)
            installed.add(name)
    if installed == {"onnxruntime", "onnxruntime-gpu"}:
        return (
            "onnxruntime and onnxruntime-gpu are both installed and share one package folder, "
            "where the CPU build's files won: run `pip uninstall -y onnxruntime onnxruntime-gpu` "
            "and then `pip install 'onnxruntime-gpu[cuda,cudnn]>=1.28,<2'`"
        )
    return "install the 'gpu' extra as the README says, or allow the fallback to CPU"


def provider_failure(printed: str) -> str:
    """The cause in onnxruntime's printed "EP Error" block, in a line (CUDA's own words)."""
    cuda = re.search(r"CUDA failure \d+: ([^;\n]+)", printed)
    if cuda:
        return cuda.group(1).strip()
    block = re.search(r"EP Error (.+?)(?: when using|$)", printed, re.S)
    if block:
        return " ".join(block.group(1).split())[-300:]
    return "no reason given"


def gpu_requirements() -> str:
    """What this onnxruntime build needs to run on a GPU, for the error that says it cannot."""
    try:
        from onnxruntime.capi import build_and_package_info as build

        cuda = str(getattr(build, "cuda_version", "") or "")
    except ImportError:
        cuda = ""
    needs = f"CUDA {cuda.split('.')[0]}.x" if cuda else "CUDA"
    return (
        f"This onnxruntime needs a visible NVIDIA GPU with {needs} and cuDNN 9 libraries: "
        "install the 'gpu' extra, which brings them as NVIDIA's wheels, or use a CUDA base image"
    )
