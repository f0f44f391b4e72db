"""Transfer learning: start a network with a trained model's layers, then train a new head.

    model:
      base: {model: ../digits, until: flatten, trainable: false}
      layers:
        - {type: dense, units: 2, activation: softmax}

`model.base.model` is a model folder (relative to this `model.yaml`), its latest version unless
`version` is given. Its bundle carries what this needs: `metadata.json` records the spec it was
trained from (so its layers can be rebuilt) and `weights.npz` its trained weights, scaler
included. The spec is spliced when it is read: the base's layers up to and including `until`
(by the names `--summary` shows), then `layers:` as the head, with the base's `input_shape`.
Every later step (shapes, summary, training, export) sees one network.

`trainable: false` freezes the base's layers, and their batch normalization runs in inference
mode, as in Keras; `trainable: true` fine-tunes them. Either way the data is scaled by the
base's scaler, since the base's weights were learned on data scaled that way.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import inference
from inference.metadata import METADATA_FILE

WEIGHTS_FILE = "weights.npz"
"""The trained state of a spec-trained bundle (scaler and network), by the names of its ONNX
initializers: what a transfer-learning spec starts from. Numpy's format, read without pickle."""


@dataclass(frozen=True)
class Base:
    """A base model resolved to one bundle version, and the layers taken from it."""

    folder: Path
    """The version folder."""
    name: str
    version: int
    sha256: str
    layers: list[dict[str, Any]]
    """The base's layers up to `until`, each with its (Keras) name."""
    input_shape: list[int]
    scale: str

    def provenance(self, until: str, trainable: bool) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "until": until,
            "trainable": trainable,
        }


def resolve(base: dict[str, Any], spec_file: Path) -> Base:
    """The bundle `base` names, read and checked; a ValueError says what is wrong, in one line."""
    from training.spec import NetworkSpec  # the spec module imports this one

    if not isinstance(base, dict) or not isinstance(base.get("model"), str):
        raise ValueError("model.base: expected {model: <model folder>, until: <layer name>}")
    folder = (spec_file.parent / base["model"]).resolve()
    versions = inference.list_versions(folder) if folder.is_dir() else []
    if not versions:
        raise ValueError(f"model.base.model: {base['model']}: no trained model version there")
    version = base.get("version", versions[-1])
    if version not in versions:
        raise ValueError(
            f"model.base.version: {base['model']} has no version {version!r}; it has "
            f"{', '.join(map(str, versions))}"
        )
    bundle = folder / str(version)
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    made = metadata.get("provenance") or {}
    spec = made.get("spec")
    if not isinstance(spec, dict) or not (bundle / WEIGHTS_FILE).is_file():
        raise ValueError(
            f"model.base.model: {bundle} was not trained from a spec by this version of the "
            f"trainer (it has no recorded spec or no {WEIGHTS_FILE}); retrain it first"
        )
    network = NetworkSpec.model_validate(spec["model"])
    names = network.layer_names
    until = base.get("until")
    if until not in names:
        raise ValueError(
            f"model.base.until: {until!r} is not a layer of {metadata['name']}; its layers: "
            f"{', '.join(names)}"
        )
    cut = names.index(until) + 1
    layers = [
        {**layer.model_dump(mode="json", exclude_defaults=True), "type": layer.type, "name": name}
        for name, layer in zip(names[:cut], network.layers[:cut], strict=True)
    ]
    for layer in layers:
        layer.pop("input_shape", None)
    width = len(spec["data"]["features"])
    return Base(
        folder=bundle,
        name=metadata["name"],
        version=int(metadata["version"]),
        sha256=str((metadata.get("onnx") or {}).get("sha256", "")),
        layers=layers,
        input_shape=list(network.input_shape_for(width)),
        scale=str((spec.get("preprocessing") or {}).get("scale", "none")),
    )


def splice(raw: dict[str, Any], spec_file: Path) -> dict[str, Any]:
    """The raw spec with the base's layers put before `layers:` (unchanged without a base)."""
    model = raw.get("model")
    if not isinstance(model, dict) or "base" not in model:
        return raw
    base = resolve(model["base"], spec_file)
    spliced = copy.deepcopy(raw)
    head = spliced["model"].get("layers")
    if not isinstance(head, list) or not head:
        raise ValueError("model.layers: give at least one layer: the head trained on the base")
    if "input_shape" in spliced["model"] or any(
        isinstance(layer, dict) and "input_shape" in layer for layer in head
    ):
        raise ValueError("model.input_shape: the base model's input shape is used; remove it")
    scale = (spliced.get("preprocessing") or {}).get("scale", "none")
    if scale not in ("none", base.scale):
        raise ValueError(
            f"preprocessing.scale: the base model's scaling ({base.scale}) is used, since its "
            "weights learned from data scaled that way; remove preprocessing"
        )
    spliced["preprocessing"] = {"scale": base.scale}
    spliced["model"]["input_shape"] = base.input_shape
    spliced["model"]["layers"] = [*base.layers, *head]
    return spliced
