"""`python -m batch score --model models/side_effects --input data.parquet --output scored/`

Scores a table with a bundle on Spark: an embedded `local[*]` by default, any cluster through
`--master` or `spark-submit`, or a Spark Connect server through `--remote sc://host:port` (or
`SPARK_REMOTE`). Paths are local or in a store (`s3://...`: `batch.storage`). Errors are one
line on stderr: exit 2 for a wrong argument or
input (found before Spark starts where it can be: `batch.preflight`), 1 when the job failed or
`--fail-on-bad-rows` found bad rows, 143 (130) when SIGTERM (Ctrl-C) stopped it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import inference
from batch import preflight
from batch.errors import JobError, ScoringError
from batch.model_spec import parse_column_map
from batch.storage import is_local
from inference.runtime import check_provider_names, resolve_providers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m batch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score a table with a model bundle")
    score.add_argument(
        "--model", required=True, help="a model folder (latest version) or a version folder"
    )
    score.add_argument("--version", type=int, help="a version of the model folder")
    score.add_argument("--input", required=True, help="Parquet or CSV file or folder")
    score.add_argument("--output", required=True, help="where to write the scored table")
    score.add_argument(
        "--format", choices=("parquet", "csv"), help="input format (default: from the extension)"
    )
    score.add_argument("--output-format", choices=("parquet", "csv"), default="parquet")
    score.add_argument(
        "--mode",
        choices=("error", "overwrite"),
        default="error",
        help="if the output exists: fail (default) or replace it",
    )
    score.add_argument(
        "--prefix", default="pred_", help="prefix of the output columns (default pred_)"
    )
    score.add_argument(
        "--outputs", help="model outputs to add, comma-separated, e.g. a hidden layer: dense_1"
    )
    score.add_argument(
        "--features-column", help="one array column holding all features, in model order"
    )
    score.add_argument(
        "--input-columns",
        type=column_map,
        help="the column of each model input, e.g. image=pixels,attention_mask=mask (default: "
        "the column named like the input)",
    )
    score.add_argument("--master", help="Spark master (default local[*], or spark-submit's)")
    score.add_argument(
        "--remote",
        help="a Spark Connect server, e.g. sc://host:15002 (default: $SPARK_REMOTE if set)",
    )
    score.add_argument(
        "--io",
        choices=("auto", "arrow", "spark"),
        default="auto",
        help="who reads and writes the files: pyarrow inside Spark's tasks (fast; Parquet only), "
        "Spark's own reader and writer, or auto (arrow where it can; the default)",
    )
    score.add_argument(
        "--providers",
        default="cpu",
        help="onnxruntime execution providers on the executors, in order, e.g. cuda,cpu "
        "(default cpu); with cuda each task runs on the GPU Spark gave it",
    )
    score.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="score on the CPU where a requested accelerator cannot start, instead of failing",
    )
    score.add_argument(
        "--fail-on-bad-rows",
        action="store_true",
        help="exit 1 without writing if any row cannot be scored",
    )
    return parser.parse_args(argv)


def column_map(text: str) -> dict[str, str]:
    """argparse's `type` for `--input-columns`: a bad map is a usage error (exit 2)."""
    try:
        return parse_column_map(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its connection chatter is not ours
    try:
        providers = check(args)
    except (JobError, ScoringError, inference.InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return score(args, providers)


def check(args: argparse.Namespace) -> list[str]:
    """Every refusal that needs no Spark (`batch.preflight`), in a second or two; the providers."""
    args.remote = args.remote or os.environ.get("SPARK_REMOTE") or None
    if args.remote and args.master:
        raise JobError("--master and --remote (or SPARK_REMOTE) exclude each other; pass one")
    if args.remote:
        preflight.check_remote(args.remote)
        local = preflight.local_remote(args.remote)
    else:
        local = preflight.local_master(args.master)
    spec = preflight.check_model(
        args.model,
        args.version,
        outputs(args),
        args.features_column,
        args.input_columns,
    )
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if local:  # the executors are this machine: ask it now
        resolve_providers(providers, args.allow_cpu_fallback)
    else:  # only the executors can tell whether they have these; names are checked here
        check_provider_names(providers)
    in_format = preflight.input_format(args.input, args.format)
    preflight.check_io(args.io, in_format, args.output_format, local, (args.input, args.output))
    preflight.check_paths(args.input, args.output, args.mode, local=local)
    if local or not is_local(args.input):
        preflight.check_columns(args.input, in_format, spec)
    return providers


def outputs(args: argparse.Namespace) -> list[str] | None:
    return [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None


def score(args: argparse.Namespace, providers: list[str]) -> int:
    """Start Spark and run the job (pyspark is imported only now: the checks above run without
    it)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    from batch.job import run
    from batch.session import spark_session

    try:
        spark = spark_session(args.master, remote=args.remote)
        with stopped_by_signals():  # after pyspark's SIGINT handler, which logs tracebacks
            report = run(
                spark,
                model=args.model,
                input_path=args.input,
                output_path=args.output,
                fmt=args.format,
                output_format=args.output_format,
                mode=args.mode,
                prefix=args.prefix,
                outputs=outputs(args),
                features_column=args.features_column,
                input_columns=args.input_columns,
                version=args.version,
                fail_on_bad_rows=args.fail_on_bad_rows,
                io=args.io,
                providers=providers,
                allow_cpu_fallback=args.allow_cpu_fallback,
            )
    except (
        JobError,
        inference.InferenceError,
        OSError,
        PySparkException,
        Py4JJavaError,
        Terminated,
        KeyboardInterrupt,
    ) as e:
        message, code = failure(e)
        print(f"error: {message}", file=sys.stderr)
        return code
    print(
        f"Scored {report.rows} rows ({report.bad_rows} could not be scored) into {report.output} "
        f"in {report.seconds:.1f}s ({report.rows_per_second:,.0f} rows/s)"
    )
    return 0


def failure(e: BaseException) -> tuple[str, int]:
    """The one line and the exit status for a run that stopped with `e`."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    if isinstance(e, JobError):
        return str(e), e.exit_code
    if isinstance(e, inference.InferenceError):
        return str(e), 2
    if isinstance(e, Terminated | KeyboardInterrupt):
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        return f"stopped by {signum.name}; nothing was written", 128 + signum
    if isinstance(e, OSError):  # a local file system's refusal the checks could not foresee
        return str(e), 2 if isinstance(e, PermissionError) else 1
    if isinstance(e, PySparkException):  # Spark's own refusal (unreadable input, bad path, ...)
        return f"Spark: {str(e).splitlines()[0]}", 1
    if isinstance(e, Py4JJavaError):  # a JVM failure Spark did not translate (file system, ...)
        return f"Spark: {str(e.java_exception).splitlines()[0]}", 1
    raise e


class Terminated(BaseException):
    """SIGTERM (Kubernetes' eviction, a scheduler's kill) or SIGINT (Ctrl-C) arrived while the job
    ran. A `BaseException`, as `KeyboardInterrupt` is, so that no `except Exception` on the way
    (py4j's) turns it into another error."""

    def __init__(self, signum: signal.Signals) -> None:
        super().__init__(signum.name)
        self.signum = signum


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGINT as an exception, so the job cancels its Spark jobs and removes its
    staging folder on the way out (`batch.job`). SIGTERM's default handler ends the process at
    once and leaves the folder behind, as kill -9 does: then the next run removes it
    (`batch.staging`)."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signal.Signals(signum))

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
