"""One DDP rank as TorchDistributor starts it (torchrun sets the rank and world variables), for
the GPU test: `_rank` must choose nccl and the GPU by itself. The driver's half follows in the
same process: rebuild the network from rank 0's weights and export the bundle.

    python -m torch.distributed.run --standalone --nproc-per-node 1 tests/gpu/nccl_rank.py \
        SPEC EPOCHS REPORT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from training.distributed import RankFailed, _rank
from training.trainer import export, prepare, rebuild

backends: list[str] = []
_init = dist.init_process_group


def _recording_init(backend: str, **kwargs: object) -> None:
    backends.append(backend)
    _init(backend, **kwargs)  # type: ignore[arg-type]


def main() -> None:
    spec, epochs, report = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    dist.init_process_group = _recording_init  # type: ignore[assignment]
    started = time.perf_counter()
    run = prepare(spec, epochs=epochs, verbose=0)
    output = _rank(run)
    if isinstance(output, RankFailed):
        report.write_text(json.dumps({"backends": backends, "error": output.error}))
        return
    state, history = output
    result = export(run, rebuild(run, state, history), started=started)
    report.write_text(
        json.dumps({"backends": backends, "bundle": str(result.bundle), "metrics": result.metrics})
    )


if __name__ == "__main__":
    main()
