"""`python -m training PATH...`: train models from their specs and export their bundles.

PATH is a model folder (`models/side_effects`), its `model.yaml`, or a repository folder
(`models`), which trains every model in it. Errors are one line on stderr and a non-zero exit:
2 for a wrong spec or data, 1 for a failed export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference import InferenceError, list_versions
from training.export import ExportError
from training.spec import SPEC_FILE, SpecError
from training.train import train


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
    return parser.parse_args(argv)


def model_folders(path: Path) -> list[Path]:
    """The model folders a path names: itself, or every child holding a model.yaml."""
    if path.is_file() or (path / SPEC_FILE).is_file() or not path.is_dir():
        return [path]
    children = sorted(p for p in path.iterdir() if (p / SPEC_FILE).is_file())
    if not children:
        raise SpecError(f"{path}: no {SPEC_FILE} here or in its subfolders")
    return children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        folders = [f for p in args.paths for f in model_folders(p)]
        for folder in folders:
            model_dir = folder.parent if folder.is_file() else folder
            if args.if_missing and list_versions(model_dir):
                print(f"{model_dir}: bundle exists (version {list_versions(model_dir)[-1]})")
                continue
            result = train(folder, epochs=args.epochs, verbose=args.verbose)
            summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
            print(f"Bundle written: {result.bundle} ({summary})")
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ExportError, InferenceError) as e:
        print(f"error: export failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a read-only model folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no bundle was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
