"""The model repository as the service sees it: which versions are loaded, ready or failed.

Each model's state is an immutable `ModelEntry`, replaced whole on (re)load or unload. A request
takes the entry once, so a reload swaps atomically: requests in flight finish on the old
sessions, new requests get the new ones. A model that fails to load is recorded with its reason
and the others keep serving.

Which versions are served comes from the optional `serving:` section of the model's
`model.yaml`:

    serving:
      version_policy: latest        # latest (default) | all | {latest: 2} | {specific: [1, 3]}
      batching: {max_batch_size: 64, max_delay_us: 200}   # overrides the server's settings
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import inference
from inference.yaml_files import YamlError, load_yaml
from serving.core.batching import BATCHING_OFF, BatchingConfig, BatchingOverride
from serving.core.errors import BadRequest, ModelNotFound, ModelNotReady

log = logging.getLogger("serving")

State = Literal["LOADING", "READY", "UNAVAILABLE"]


class VersionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[int] | None = Field(default=None, min_length=1)

    def select(self, available: list[int]) -> list[int]:
        if self.all:
            return available
        if self.specific is not None:
            return [v for v in available if v in self.specific]
        return available[-(self.latest or 1) :]


class ServingSection(BaseModel):
    """The `serving:` section of model.yaml (what the service reads; training ignores it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version_policy: VersionPolicy = VersionPolicy()
    batching: BatchingOverride | None = None

    @classmethod
    def parse(cls, raw: Any) -> ServingSection:
        if isinstance(raw, dict) and isinstance(raw.get("version_policy"), str):
            raw = {**raw, "version_policy": {raw["version_policy"]: True}}
            if raw["version_policy"] == {"latest": True}:
                raw["version_policy"] = {"latest": 1}
        return cls.model_validate(raw or {})


@dataclass(frozen=True)
class VersionState:
    version: int
    state: State
    model: inference.Model | None = None
    reason: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A model's versions as loaded; a reload builds a new entry, so nothing here changes and
    the ready versions are computed once (they are read on every request)."""

    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    reason: str = ""
    """Why the model as a whole is unavailable (bad serving section, no bundle, unloaded)."""
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    """Which versions its `model.yaml` serves (reported by the model configuration)."""

    @functools.cached_property
    def ready_versions(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.state == "READY")

    @functools.cached_property
    def default_version(self) -> int | None:
        ready = self.ready_versions
        return ready[-1] if ready else None


LoadObserver = Callable[[str, int, float], None]


class ModelRepository:
    def __init__(
        self,
        root: Path,
        options: inference.RuntimeOptions,
        only: list[str] | None = None,
        on_load: LoadObserver | None = None,
        batching: BatchingConfig = BATCHING_OFF,
    ):
        self.root = root
        self.options = options
        self.only = only or []
        self.on_load = on_load
        self.default_batching = batching
        self._batching: weakref.WeakKeyDictionary[inference.Model, BatchingConfig] = (
            weakref.WeakKeyDictionary()
        )
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()  # one (re)load at a time; reads never wait

    def names_on_disk(self) -> list[str]:
        if self.only:
            return list(self.only)
        return model_names(self.root)

    def load_all(self) -> None:
        """Load every model; a model that cannot load is recorded with its reason, never fatal."""
        for name in self.names_on_disk():
            try:
                self.load(name)
            except Exception as e:  # a missing folder, a permission error, an onnxruntime crash
                log.exception("model %s not loaded", name, extra={"model": name})
                self._entries[name] = ModelEntry(name, reason=str(e) or type(e).__name__)

    def load(self, name: str) -> ModelEntry:
        """(Re)load a model's versions from disk, warm them up, then swap them in."""
        folder = self.root / name
        if "/" in name or name.startswith(".") or not _is_dir(folder):
            raise ModelNotFound(f"model {name!r} is not in the repository {self.root}")
        with self._lock:
            previous = self._entries.setdefault(name, ModelEntry(name, reason="loading"))
            entry = self._build(name, folder)
            if entry.default_version is None and previous.default_version is not None:
                log.error(
                    "reload of %s failed (%s); still serving the versions already loaded",
                    name,
                    self.describe_failure(entry),
                    extra={"model": name},
                )
                return entry  # the caller reports the failure; the old sessions keep serving
            self._entries[name] = entry
        return entry

    def unload(self, name: str) -> None:
        self.entry(name)  # 404 if unknown
        with self._lock:  # after a (re)load in progress, never interleaved with it
            self._entries[name] = ModelEntry(name, reason="unloaded")
        log.info("unloaded model %s", name, extra={"model": name})

    def entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotFound(f"unknown model {name!r}; models: {known}")
        return entry

    def entries(self) -> list[ModelEntry]:
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str, version: str | int | None = None) -> inference.Model:
        """The ready model for a request: the default (latest ready) version or the one asked."""
        entry = self.entry(name)
        if version is None or version == "":
            default = entry.default_version
            if default is None:
                raise ModelNotReady(f"model {name!r} is not ready: {self.describe_failure(entry)}")
            return self._model(entry, default)
        number = parse_version(version)
        if number not in entry.versions:
            served = ", ".join(map(str, sorted(entry.versions))) or "none"
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: {served}")
        return self._model(entry, number)

    @staticmethod
    def _model(entry: ModelEntry, version: int) -> inference.Model:
        state = entry.versions[version]
        if state.model is None or state.state != "READY":
            why = state.reason or state.state
            raise ModelNotReady(f"model {entry.name!r} version {version} is not ready: {why}")
        return state.model

    @staticmethod
    def describe_failure(entry: ModelEntry) -> str:
        """Why a model has no ready version, from its versions' and its own reasons."""
        failures = [f"version {s.version}: {s.reason}" for s in entry.versions.values() if s.reason]
        return "; ".join(failures) or entry.reason or "no version loaded"

    def _build(self, name: str, folder: Path) -> ModelEntry:
        try:
            section = ServingSection.parse(_serving_section(folder))
        except YamlError as e:  # the message names the file
            log.error("model %s not loaded: %s", name, e, extra={"model": name})
            return ModelEntry(name, reason=str(e))
        except (ValidationError, ValueError) as e:
            reason = f"{folder / 'model.yaml'}: invalid serving section: {e}"
            log.error("model %s not loaded: %s", name, reason, extra={"model": name})
            return ModelEntry(name, reason=reason)
        available = inference.list_versions(folder)
        selected = section.version_policy.select(available)
        if not selected:
            reason = f"no bundle version to serve in {folder} (found: {available or 'none'})"
            if (folder / "model.onnx").is_file():
                reason += f"; put model.onnx in a numbered version folder: {folder / '1'}/"
            log.error("model %s not loaded: %s", name, reason, extra={"model": name})
            return ModelEntry(name, reason=reason)
        batching = self.default_batching.override(section.batching)
        return ModelEntry(
            name,
            {v: self._load_version(name, folder, v, batching) for v in selected},
            policy=section.version_policy,
        )

    def batching(self, model: inference.Model) -> BatchingConfig:
        """The adaptive batching of a loaded model version (the settings, or its model.yaml)."""
        return self._batching.get(model, self.default_batching)

    def _load_version(
        self, name: str, folder: Path, version: int, batching: BatchingConfig
    ) -> VersionState:
        start = time.perf_counter()
        try:
            model = inference.load(folder, version=version, options=self.options)
            latency = model.warm_up()
            measured = (
                f"measured {latency.fixed_s * 1e6:.1f} µs + {latency.per_row_s * 1e6:.2f} µs/row"
                if latency is not None
                else "cost not measured"
            )
        except inference.InferenceError as e:
            log.error(
                "model %s version %d failed to load: %s",
                name,
                version,
                e,
                extra={"model": name, "version": version},
            )
            return VersionState(version, "UNAVAILABLE", reason=str(e))
        except Exception as e:  # e.g. onnxruntime failing during warm-up, an unreadable file
            log.exception(
                "model %s version %d failed to load",
                name,
                version,
                extra={"model": name, "version": version},
            )
            return VersionState(version, "UNAVAILABLE", reason=f"{type(e).__name__}: {e}")
        seconds = time.perf_counter() - start
        if model.name != name:
            log.warning("bundle %s is named %r; serving it as %r", model.path, model.name, name)
        log.info(
            "loaded model %s version %d in %.3fs on %s (%s)",
            name,
            version,
            seconds,
            ", ".join(model.providers),
            measured,
            extra={"model": name, "version": version},
        )
        if self.on_load is not None:
            self.on_load(name, version, seconds)
        self._batching[model] = batching
        return VersionState(version, "READY", model)


def parse_version(version: str | int) -> int:
    if isinstance(version, str) and not (version.isascii() and version.isdigit()):
        raise BadRequest(f"model version must be a positive integer, got {version!r}")
    try:
        number = int(version)
    except ValueError:
        raise BadRequest(f"model version must be a positive integer, got {version!r}") from None
    if number < 1:
        raise BadRequest(f"model version must be a positive integer, got {version!r}")
    return number


def _serving_section(folder: Path) -> Any:
    spec = folder / "model.yaml"
    if not spec.is_file():
        return None
    raw = load_yaml(spec)
    return raw.get("serving") if isinstance(raw, dict) else None


def model_names(root: Path) -> list[str]:
    """The model folders in a repository folder (none if it is not a folder)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _holds_model(p))


def _holds_model(folder: Path) -> bool:
    """A model folder: numbered versions, a spec, or a graph put there without a version
    folder (listed, so that its reason says where the graph belongs)."""
    if not folder.is_dir():
        return False
    files = ("model.yaml", "model.onnx", "metadata.json")
    return any((folder / f).is_file() for f in files) or bool(inference.list_versions(folder))


def _is_dir(path: Path) -> bool:
    """`Path.is_dir`, but False for a name the file system refuses (e.g. too long)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):  # ENAMETOOLONG; an embedded NUL byte
        return False
