"""`python -m training PATH...`: train models from their specs and export their bundles.

PATH is a model folder (`models/side_effects`), its `model.yaml`, or a repository folder
(`models`), which trains every model in it.

    python -m training models/side_effects                       # one process
    python -m training models/side_effects --spark --num-processes 2   # DDP, Spark tasks
    python -m training models/side_effects --search [--spark]    # the spec's search: section

Errors are one line on stderr and a non-zero exit: 2 for a wrong spec, data or option, 1 for a
failed export, distributed run or search.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from inference import InferenceError, list_versions
from training import data as datasets
from training.errors import DistributedError, DivergedError, ExportError, SearchError
from training.spark import SparkUnavailable, check_master
from training.spec import SPEC_FILE, SpecError, load_spec
from training.summary import summary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from training.trainer import TrainResult


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train models from model.yaml and export bundles."
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="a model folder, its model.yaml, or a folder of model folders",
    )
    parser.add_argument("--epochs", type=positive_int, help="override fit.epochs")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), help="override fit.verbose")
    parser.add_argument(
        "--if-missing", action="store_true", help="skip models that already have a bundle version"
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print each model's layers, output shapes and parameter counts (Keras's "
        "model.summary()) from its spec, and train nothing",
    )
    spark = parser.add_argument_group("Spark")
    spark.add_argument(
        "--spark",
        action="store_true",
        help="train on Spark: one model with DDP across --num-processes tasks, or with --search "
        "each trial as a Spark task",
    )
    spark.add_argument(
        "--num-processes", type=int, help="DDP processes (Spark tasks) for --spark (default 2)"
    )
    spark.add_argument(
        "--master", help="Spark master for --spark (default local[*], or spark-submit's)"
    )
    spark.add_argument(
        "--remote",
        help="a Spark Connect server for --spark, sc://HOST:PORT (default: $SPARK_REMOTE)",
    )
    spark.add_argument(
        "--search", action="store_true", help="run the spec's search: section, export the best"
    )
    spark.add_argument(
        "--parallelism", type=int, help="trials at a time for --search (default search.parallelism)"
    )
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Options that argparse cannot check alone; a mistake is a one-line error, exit 2."""
    for name in ("num_processes", "parallelism"):
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise SpecError(f"{flag} must be a positive integer, got {value}")
    if args.num_processes is not None and (args.search or not args.spark):
        raise SpecError("--num-processes is for --spark training without --search")
    if args.parallelism is not None and not args.search:
        raise SpecError("--parallelism is for --search")
    if args.master is not None and not args.spark:
        raise SpecError("--master is for --spark")
    if args.remote is not None and not args.spark:
        raise SpecError("--remote is for --spark")
    if args.remote is not None and args.master is not None:
        raise SpecError("--remote and --master: a Spark Connect server has its own master")
    if args.summary and (args.spark or args.search or args.if_missing):
        raise SpecError("--summary trains nothing: it takes no --spark, --search or --if-missing")
    if args.verbose is not None and args.search:
        raise SpecError("--verbose is not for --search: trials train silently, one line each")
    if args.master is not None:
        try:
            check_master(args.master)
        except ValueError as e:
            raise SpecError(str(e)) from e


def model_folders(path: Path) -> list[Path]:
    """The model folders a path names: itself, or every child holding a model.yaml."""
    if not path.exists():
        raise SpecError(f"{path}: no such spec file (expected a model folder with {SPEC_FILE})")
    if path.is_file() or (path / SPEC_FILE).is_file():
        return [path]
    children = sorted(p for p in path.iterdir() if (p / SPEC_FILE).is_file())
    if not children:
        raise SpecError(f"{path}: no {SPEC_FILE} here or in its subfolders")
    return children


def train_one(folder: Path, args: argparse.Namespace, spark: SparkSession | None) -> TrainResult:
    # torch loads here, once every spec and option has been checked (errors come in < 2 s)
    from training.distributed import train_distributed
    from training.trainer import train
    from training.tuning import search

    if args.search:
        found = search(folder, spark=spark, parallelism=args.parallelism, epochs=args.epochs)
        print(f"Leaderboard: {', '.join(map(str, found.files))}")
        return found.train
    if spark is not None:
        return train_distributed(
            folder,
            num_processes=args.num_processes or 2,
            spark=spark,
            epochs=args.epochs,
            verbose=args.verbose,
        )
    return train(folder, epochs=args.epochs, verbose=args.verbose)


def run(args: argparse.Namespace, progress: list[Path]) -> None:
    """Train every model the paths name; `progress` gets each folder as its training starts."""
    check_options(args)
    if args.summary:
        for folder in [f for p in args.paths for f in model_folders(p)]:
            print(summary(load_spec(folder)[0]))
        return
    todo = []
    for folder in [f for p in args.paths for f in model_folders(p)]:
        model_dir = folder.parent if folder.is_file() else folder
        if args.if_missing and list_versions(model_dir):
            print(f"{model_dir}: bundle exists (version {list_versions(model_dir)[-1]})")
            continue
        # every spec, and what can be seen of its data, is checked before the first model trains
        datasets.check(*load_spec(folder))
        todo.append((folder, model_dir))
    spark = None
    for folder, model_dir in todo:
        progress.append(model_dir)
        if args.spark and spark is None:
            from training.spark import spark_session

            remote = args.remote or os.environ.get("SPARK_REMOTE") or None
            spark = spark_session(args.master, remote=None if args.master else remote)
        result = train_one(folder, args, spark)
        figures = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"Bundle written: {result.bundle} ({figures})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started: list[Path] = []
    try:
        run(args, started)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ExportError, InferenceError) as e:
        print(f"error: export failed: {e}", file=sys.stderr)
        return 1
    # OSError: a read-only model folder, a full disk
    except (DistributedError, DivergedError, SearchError, SparkUnavailable, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        detail = "; no bundle was written"
        if started:  # earlier models of the run may have theirs
            detail = f" while training {started[-1]}{detail} for it"
        print(f"error: interrupted{detail}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
