"""Configuration files (YAML under configs/) and the output layout of a run."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


DEFAULT_CONFIG = Path("configs/default.yaml")


def load_config(path: str | Path | None = None, sets: dict | None = None, n_products: int | None = None) -> dict:
    """Every setting, resolved (prodcat.settings): declared defaults, size rules for `n_products`, the
    YAML file (and what it `extends:`), then `sets` (--set values); bad keys and values fail here."""
    return resolve_config(path, sets, n_products).values


def resolve_config(path: str | Path | None = None, sets: dict | None = None, n_products: int | None = None):
    from prodcat.settings import load_layers, resolve

    layers = load_layers(path or DEFAULT_CONFIG) + ([("--set", sets)] if sets else [])
    return resolve(layers, n_products)


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
