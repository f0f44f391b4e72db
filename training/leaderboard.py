"""The search's leaderboard: one row per trial, best first, failed trials last with their error.

Printed as a table, and written as `leaderboard.csv` (and `leaderboard.parquet` when pyarrow is
installed) into the bundle folder of the exported winner.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.trials import TrialResult

Row = dict[str, Any]


def rank(results: Sequence[TrialResult], metric: str, maximize: bool) -> list[TrialResult]:
    """Successful trials by `metric`, best first (ties: the earlier trial), then the failures."""
    sign = -1.0 if maximize else 1.0
    ok = sorted(
        (r for r in results if r.ok), key=lambda r: (sign * r.metrics[metric], r.trial.number)
    )
    return ok + sorted((r for r in results if not r.ok), key=lambda r: r.trial.number)


def rows(ranked: Sequence[TrialResult], space: Sequence[str]) -> list[Row]:
    # Every metric any trial logged (the space may vary compile.metrics): none is left out.
    metric_names = list(dict.fromkeys(name for r in ranked for name in r.metrics))
    table = []
    for position, result in enumerate(ranked, start=1):
        row: Row = {
            "rank": position if result.ok else None,
            "trial": result.trial.number,
            "status": "ok" if result.ok else "failed",
        }
        row.update({name: result.metrics.get(name) for name in metric_names})
        row.update({path: result.trial.params.get(path) for path in space})
        row["epochs"] = len(result.history.epochs) if result.history else None
        row["seconds"] = round(result.seconds, 3)
        row["error"] = result.error
        table.append(row)
    return table


def format_table(table: Sequence[Row]) -> str:
    """A plain aligned text table."""
    if not table:
        return "(no trials)"
    columns = list(table[0])
    cells = [[_cell(row[c]) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def write(table: Sequence[Row], folder: Path) -> list[Path]:
    """`leaderboard.csv`, and `leaderboard.parquet` if pyarrow is there; returns the files."""
    columns = list(table[0]) if table else []
    csv_path = folder / "leaderboard.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in table)
    written = [csv_path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    arrays = {c: _column([row[c] for row in table]) for c in columns}
    pq.write_table(pa.table(arrays), folder / "leaderboard.parquet")
    return [*written, folder / "leaderboard.parquet"]


def _column(values: list[Any]) -> list[Any]:
    """One type per Parquet column: numbers as floats when mixed, anything else as JSON."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if any(isinstance(v, float) for v in present):
            return [None if v is None else float(v) for v in values]
        return values
    if all(isinstance(v, str) for v in present) or all(isinstance(v, bool) for v in present):
        return values
    return [None if v is None else json.dumps(v) for v in values]


def _csv_value(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value)
    return "" if value is None else value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or 0 < abs(value) < 1e-3:
            return f"{value:.4g}"
        return f"{value:.4f}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
