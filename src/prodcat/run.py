"""A run: one dataset, one config and the workdir its outputs go to; shared by every command."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from prodcat.config import Paths, deep_merge, load_config
from prodcat.data import Dataset, load_dataset
from prodcat.folds import load_or_make_folds


@dataclass
class Run:
    cfg: dict
    ds: Dataset
    paths: Paths

    @classmethod
    def open(cls, data: str | Path | None = None, config: str | Path | None = None,
             workdir: str | Path | None = None, overrides: dict | None = None) -> "Run":
        cfg = load_config(config)
        if overrides:
            cfg = deep_merge(cfg, overrides)
        data = Path(data or cfg.get("data", "data/flipkart"))
        ds = load_dataset(data, name=cfg.get("dataset_name"))
        workdir = Path(workdir or os.environ.get("PRODCAT_WORKDIR") or cfg.get("workdir", "."))
        return cls(cfg=cfg, ds=ds, paths=Paths(workdir, ds.name))

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 42))

    @property
    def k(self) -> int:
        return int(self.cfg.get("folds", {}).get("k", 5))

    @property
    def top_k(self) -> int:
        return int(self.cfg.get("top_k", 20))

    @cached_property
    def folds(self) -> pd.DataFrame:
        return load_or_make_folds(self.ds, self.paths.folds, self.k, self.seed)

    @cached_property
    def env(self):
        """What every model shares: text settings, top_k, seed and the content-keyed cache folder."""
        from prodcat.cv import ModelEnv

        return ModelEnv(text=dict(self.cfg.get("text", {})), top_k=self.top_k, seed=self.seed,
                        cache=self.paths.cache)

    def texts(self, frame: pd.DataFrame) -> pd.Series:
        """Product texts of `frame` (index: ids) with the shared text settings."""
        return self.env.texts(frame)

    def model_params(self, name: str) -> dict:
        return dict(self.cfg.get("models", {}).get(name, {}))


def models_root(data=None, config=None, workdir=None) -> Path:
    """models/<dataset>/ of a config and data folder, without reading the training data."""
    cfg = load_config(config)
    data = Path(data or cfg.get("data", "data/flipkart"))
    name = cfg.get("dataset_name") or data.resolve().name
    workdir = Path(workdir or os.environ.get("PRODCAT_WORKDIR") or cfg.get("workdir", "."))
    return Paths(workdir, name).models_root
