"""Many models at once: a grid or random search over any values of the spec.

    python -m training models/side_effects --search            # trials in a process pool
    python -m training models/side_effects --search --spark    # trials as Spark tasks

The spec's `search:` section names the space (dotted spec paths → values or distributions),
the method, the budget and the metric. Every trial is the spec with its values put in, checked
by the same pydantic model as any spec *before* any training: a path that is not in the spec,
or a value that makes an invalid spec, is a spec error (exit 2). Trials then run in parallel,
each a full training run on the same data (loaded once on the driver). A trial that fails while
training is a row of the leaderboard with its error. The best trial is re-created from its
weights on the driver and exported as the next version, with the usual parity check; the
leaderboard goes into that version's folder, and its provenance records the trial and search.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from pydantic import ValidationError

from training import data as datasets
from training import leaderboard
from training.errors import SearchError
from training.search_spec import Distribution, SearchSpec
from training.sections import describe
from training.spark import master_of
from training.spec import Spec, SpecError, load_spec
from training.trainer import TrainResult, export, prepare_spec, rebuild
from training.trials import Trial, TrialJob, TrialResult, run_in_processes, run_on_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RANDOM_TRIALS = 10
"""A random search's budget when `search.trials` is not given."""


@dataclass(frozen=True)
class SearchResult:
    train: TrainResult
    """The exported winner."""
    table: list[leaderboard.Row]
    files: list[Path]


def search(
    spec_path: str | Path,
    *,
    spark: SparkSession | None = None,
    parallelism: int | None = None,
    epochs: int | None = None,
    stream: TextIO | None = None,
) -> SearchResult:
    """Run the spec's search (on Spark when `spark` is given); export and return the winner."""
    started = time.perf_counter()
    spec, spec_file = load_spec(spec_path)
    config = _search_section(spec, spec_file)
    specs = plan(spec, spec_file, epochs=epochs)
    jobs = _jobs(specs, spec_file, config.metric, spark)
    width = min(parallelism or config.parallelism, len(jobs))
    where = f"Spark {master_of(spark)}" if spark is not None else "a process pool"
    _say(
        stream,
        f"Search: {len(jobs)} {config.method} trials, {config.metric} "
        f"({'max' if config.maximize else 'min'}), {width} at a time in {where}",
    )
    results: list[TrialResult] = []

    def done(result: TrialResult) -> None:
        results.append(result)
        _say(stream, _progress_line(result, len(results), len(jobs), config.metric))

    if spark is not None:
        run_on_spark(jobs, spark, width, done)
    else:
        run_in_processes(jobs, width, done, say=lambda text: _say(stream, text))
    ranked = leaderboard.rank(results, config.metric, config.maximize)
    table = leaderboard.rows(ranked, list(config.space))
    _say(stream, leaderboard.format_table(table))
    best = ranked[0] if ranked and ranked[0].ok else None
    if best is None or best.state is None or best.history is None:
        first = next((r.error for r in ranked if r.error), "no trials")
        raise SearchError(f"all {len(results)} trials failed; nothing exported (first: {first})")
    return _export_best(best, jobs, config, table, started)


def plan(spec: Spec, spec_file: Path, *, epochs: int | None = None) -> list[tuple[Trial, Spec]]:
    """The trials of the spec's search, each with its validated spec; spec errors up front."""
    config = _search_section(spec, spec_file)
    base = spec.model_dump(mode="json", by_alias=True, exclude={"search"})
    if epochs is not None:
        base["fit"]["epochs"] = epochs  # the command line's value; the space may still vary it
    for path in config.space:
        _check_path(base, path, spec_file)
    _check_metric(spec, config.metric, str(spec_file))
    trials = []
    for number, params in enumerate(_combinations(config), start=1):
        raw = copy.deepcopy(base)
        for path, value in params.items():
            _put(raw, path.split("."), value)
        where = f"{spec_file}: search: trial {number} ({_params_text(params)})"
        try:
            trial_spec = Spec.model_validate(raw)
        except ValidationError as e:
            raise SpecError(f"{where}: {describe(e)}") from e
        _check_metric(trial_spec, config.metric, where)  # the space may change what is logged
        trials.append((Trial(number, params), trial_spec))
    return trials


def _search_section(spec: Spec, spec_file: Path) -> SearchSpec:
    if spec.search is None:
        raise SpecError(f"{spec_file}: search: --search needs a search section in the spec")
    return spec.search


def _combinations(config: SearchSpec) -> list[dict[str, Any]]:
    rng = np.random.default_rng(config.seed)
    if config.method == "random":
        draws = config.trials or RANDOM_TRIALS
        return [{k: _draw(v, rng) for k, v in config.space.items()} for _ in range(draws)]
    values = [v for v in config.space.values() if isinstance(v, list)]
    grid = [dict(zip(config.space, combo, strict=True)) for combo in itertools.product(*values)]
    if config.trials is not None and config.trials < len(grid):
        keep = sorted(rng.choice(len(grid), size=config.trials, replace=False).tolist())
        grid = [grid[i] for i in keep]
    return grid


def _draw(space: list[Any] | Distribution, rng: np.random.Generator) -> Any:
    if isinstance(space, list):
        return space[int(rng.integers(len(space)))]
    if space.choice is not None:
        return space.choice[int(rng.integers(len(space.choice)))]
    if space.randint is not None:
        return int(rng.integers(space.randint[0], space.randint[1] + 1))
    if space.uniform is not None:
        return float(rng.uniform(*space.uniform))
    assert space.loguniform is not None  # the section's validator allows exactly one
    low, high = space.loguniform
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _check_path(base: dict[str, Any], path: str, spec_file: Path) -> None:
    """Every key of a search path must exist in the spec (defaults included)."""
    node: Any = base
    walked: list[str] = []
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(walked) or "the spec"
        optimizer_parameter = walked == ["compile", "optimizer"] and i == len(parts) - 1
        if isinstance(node, dict) and (part in node or optimizer_parameter):
            node = node.get(part)  # an optimizer's parameters are checked per optimizer
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SpecError(f"{spec_file}: search.space: {path!r}: {_no_such(node, part, where)}")
        walked.append(part)


def _no_such(node: Any, part: str, where: str) -> str:
    if isinstance(node, dict):
        return f"{where} has no key {part!r}; keys: {', '.join(node)}"
    if isinstance(node, list):
        return f"{where} has {len(node)} entries; expected an index 0-{len(node) - 1}, got {part!r}"
    return f"{where} is {json.dumps(node)}, not a section with {part!r}"


def _check_metric(spec: Spec, metric: str, where: str) -> None:
    names = ["loss", *spec.compile.metrics]
    known = names + ([f"val_{n}" for n in names] if spec.validation_split > 0 else [])
    if metric not in known:
        raise SpecError(
            f"{where}: search.metric: {metric!r} is not logged; known: {', '.join(known)}"
        )


def _put(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _jobs(
    specs: Sequence[tuple[Trial, Spec]], spec_file: Path, metric: str, spark: SparkSession | None
) -> list[TrialJob]:
    """One job per trial; the data is loaded once per distinct `data` section."""
    loaded: dict[str, datasets.Dataset] = {}
    jobs = []
    for trial, spec in specs:
        key = json.dumps(spec.data.model_dump(mode="json"), sort_keys=True)
        if key not in loaded:
            loaded[key] = datasets.load(spec, spec_file, spark=spark)
        run = prepare_spec(spec, spec_file, verbose=0, data=loaded[key])
        jobs.append(TrialJob(trial, run, metric))
    return jobs


def _export_best(
    best: TrialResult,
    jobs: Sequence[TrialJob],
    config: SearchSpec,
    table: list[leaderboard.Row],
    started: float,
) -> SearchResult:
    assert best.state is not None
    assert best.history is not None
    run = next(j.run for j in jobs if j.trial.number == best.trial.number)
    names: list[str] = []

    def write_leaderboard(folder: Path) -> None:  # the staging folder of the new version
        names.extend(p.name for p in leaderboard.write(table, folder))

    result = export(
        run,
        rebuild(run, best.state, best.history),
        started=started,
        provenance={
            "search": {
                "trial": best.trial.number,
                "params": best.trial.params,
                "method": config.method,
                "metric": config.metric,
                "mode": "max" if config.maximize else "min",
                "trials": len(jobs),
                "failed": sum(1 for row in table if row["status"] == "failed"),
                "leaderboard": "leaderboard.csv",
            }
        },
        extras=write_leaderboard,
    )
    return SearchResult(result, table, [result.bundle / name for name in names])


def _progress_line(result: TrialResult, count: int, total: int, metric: str) -> str:
    head = f"Trial {result.trial.number} ({count}/{total} done) - {result.seconds:.1f}s"
    outcome = f"{metric}: {result.metrics[metric]:.4f}" if result.ok else f"failed: {result.error}"
    return f"{head} - {outcome} - {_params_text(result.trial.params)}"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())


def _say(stream: TextIO | None, text: str) -> None:
    print(text, file=stream, flush=True)
