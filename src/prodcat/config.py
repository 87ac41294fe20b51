"""Configuration files (YAML under configs/) and the output layout of a run."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from prodcat.errors import DataError

DEFAULT_CONFIG = Path("configs/default.yaml")


def load_config(path: str | Path | None = None) -> dict:
    """Read a YAML config; `extends: other.yaml` (relative to the file) is merged underneath it."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.exists():
        raise DataError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: a config must be a mapping of sections")
    base = cfg.pop("extends", None)
    if base:
        cfg = deep_merge(load_config(path.parent / base), cfg)
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(section) -> str:
    """Stable short hash of a config section: outputs made with other settings are not reused."""
    return hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Paths:
    """Where a dataset's generated outputs live; different datasets never share a folder."""

    workdir: Path
    dataset: str

    def _dir(self, kind: str, *parts: str) -> Path:
        return self.workdir.joinpath(kind, self.dataset, *parts)

    @property
    def folds(self) -> Path:
        return self._dir("folds") / "folds.parquet"

    @property
    def oof_root(self) -> Path:
        return self._dir("oof")

    def oof(self, model: str) -> Path:
        return self._dir("oof", model)

    def models(self, model: str) -> Path:
        return self._dir("models", model)

    @property
    def models_root(self) -> Path:
        """Every saved model of the dataset (and its category tree): what `predict` loads."""
        return self._dir("models")

    @property
    def cache(self) -> Path:
        return self._dir("cache")

    @property
    def submissions(self) -> Path:
        return self._dir("submissions")

    @property
    def reports(self) -> Path:
        return self._dir("reports")
