"""`python -m inference show models/digits`: what the service and the Spark job will expose for a
model folder (its inputs, outputs, classes, whether requests are batched).

`python -m inference init models/digits/1 --features @names.txt --classes 0,1,2,...` writes the
`metadata.json` overlay for a bare graph: feature names give a `[rows, features]` input the
friendly API (rows, records, named Spark columns); classes make it a classifier, with the output
that holds class scores and the one that holds the class index (guessed where only one output
fits, or named with `--scores` and `--class-index`). The overlay records the graph's sha256, so
it cannot silently describe another graph. Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference.bundle import resolve_bundle_dir, sha256_of
from inference.errors import InferenceError
from inference.metadata import METADATA_FILE, BundleMetadata, TensorInfo
from inference.model import Model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="what the service will expose for a model folder")
    show.add_argument("model", help="a model folder (latest version) or a version folder")
    show.add_argument("--version", type=int, help="a version of the model folder")
    show.add_argument("--json", action="store_true", help="the whole metadata as JSON")
    init = commands.add_parser("init", help="write metadata.json for a bare model.onnx")
    init.add_argument("bundle", help="the version folder holding model.onnx")
    init.add_argument("--features", help="feature names, comma-separated, or @file (one a line)")
    init.add_argument("--classes", help="class labels in index order, comma-separated, or @file")
    init.add_argument("--scores", help="the output holding class scores (default: guessed)")
    init.add_argument("--class-index", help="the output holding the class index (guessed)")
    init.add_argument("--description", default="", help="what the model does, in a sentence")
    init.add_argument("--force", action="store_true", help="replace an existing metadata.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "show":
            model = Model.load(args.model, args.version)
            print(model.metadata.model_dump_json(indent=2) if args.json else describe(model))
        else:
            print(f"Wrote {init(args)}")
    except (InferenceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def describe(model: Model) -> str:
    """The model as a person reads it: its tensors, roles, and what the friendly API takes."""
    meta = model.metadata
    lines = [
        f"{meta.name} version {meta.version} ({model.path})",
        f"  graph: {meta.onnx.file}, sha256 {meta.onnx.sha256[:16]}…, {meta.onnx.producer or '?'}",
        f"  task: {meta.task or 'not stated (a bare graph)'}",
        "  inputs:",
        *(f"    {_tensor(i)}" for i in meta.inputs),
        "  outputs (* returned when none are named):",
        *(
            f"  {'*' if o.name in meta.default_outputs else ' '} {_tensor(o)}  role {o.role}"
            for o in meta.outputs
        ),
    ]
    if meta.classes:
        lines.append(f"  classes: {', '.join(meta.classes)}")
    tabular = meta.tabular
    lines.append(
        f"  friendly API: rows or records of {len(tabular.feature_names or [])} named features"
        if tabular is not None
        else "  friendly API: arrays per input (no feature names)"
    )
    lines.append(
        "  batching: requests merge along the first axis"
        if meta.batchable
        else "  batching: none (a fixed first dimension): requests run one by one"
    )
    return "\n".join(lines)


def _tensor(info: TensorInfo) -> str:
    return f"{info.name}  {info.datatype} {info.shape}"


def init(args: argparse.Namespace) -> Path:
    """Write the overlay, then load the bundle with it; a refused overlay is taken back."""
    bundle = resolve_bundle_dir(args.bundle)
    target = bundle / METADATA_FILE
    if target.exists() and not args.force:
        raise InferenceError(f"{target} exists; pass --force to replace it")
    bare = Model.load(bundle) if not target.exists() else _bare(bundle, target)
    overlay = _overlay(bare.metadata, args)
    previous = target.read_bytes() if target.exists() else None
    target.write_text(json.dumps(overlay, indent=2) + "\n")
    try:
        Model.load(bundle)
    except InferenceError:
        if previous is None:
            target.unlink()
        else:
            target.write_bytes(previous)
        raise
    return target


def _bare(bundle: Path, target: Path) -> Model:
    """The bundle as its graph alone describes it (the existing overlay set aside)."""
    kept = target.read_bytes()
    target.unlink()
    try:
        return Model.load(bundle)
    finally:
        target.write_bytes(kept)


def _overlay(meta: BundleMetadata, args: argparse.Namespace) -> dict[str, Any]:
    overlay: dict[str, Any] = {"name": meta.name, "description": args.description}
    if args.features:
        overlay["inputs"] = [{"name": _tabular_input(meta), "feature_names": _names(args.features)}]
    if args.classes:
        classes = _names(args.classes)
        scores = args.scores or _guess(meta, "FP", [-1, len(classes)], "--scores")
        index = args.class_index or _guess(meta, "INT", [-1], "--class-index")
        overlay.update(task="classification", classes=classes)
        overlay["outputs"] = [
            {"name": scores, "role": "scores", "description": "class scores, in class order"},
            {"name": index, "role": "class_index", "description": "index of the class"},
        ]
    elif args.scores or args.class_index:
        raise InferenceError("--scores and --class-index need --classes")
    overlay["onnx"] = {"file": meta.onnx.file, "sha256": sha256_of(_graph(meta, args))}
    return overlay


def _graph(meta: BundleMetadata, args: argparse.Namespace) -> Path:
    return resolve_bundle_dir(args.bundle) / meta.onnx.file


def _tabular_input(meta: BundleMetadata) -> str:
    rank2 = [i.name for i in meta.inputs if len(i.shape) == 2]
    if len(meta.inputs) != 1 or not rank2:
        shapes = ", ".join(f"{i.name!r} {i.shape}" for i in meta.inputs)
        raise InferenceError(
            f"feature names need a model of one [rows, features] input; this one takes {shapes}"
        )
    return rank2[0]


def _guess(meta: BundleMetadata, kind: str, shape: list[int], flag: str) -> str:
    """The one output of this kind and shape, or a message asking for the flag."""
    fits = [o.name for o in meta.outputs if o.datatype.startswith(kind) and o.shape == shape]
    if len(fits) != 1:
        listed = ", ".join(f"{o.name!r} {o.datatype} {o.shape}" for o in meta.outputs)
        raise InferenceError(
            f"cannot tell which output to use for {flag[2:]} ({len(fits)} outputs are "
            f"{kind}* {shape}); name it with {flag}. Outputs: {listed}"
        )
    return fits[0]


def _names(value: str) -> list[str]:
    """Comma-separated names, or `@file` with one name a line (or commas)."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    names = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    if not names:
        raise InferenceError(f"no names in {value!r}")
    return names


if __name__ == "__main__":
    sys.exit(main())
