"""A run: one dataset, one config and the workdir its outputs go to; shared by every command."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from prodcat.config import Paths, deep_merge, load_config
from prodcat.data import Dataset, load_dataset
from prodcat.folds import load_or_make_folds
from prodcat.text import product_texts


@dataclass
class Run:
    cfg: dict
    ds: Dataset
    paths: Paths
    _texts: dict = field(default_factory=dict, repr=False)

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

    def texts(self, overrides: dict | None = None) -> pd.Series:
        """Product texts (train and test) indexed by id, for the global text settings plus overrides."""
        text_cfg = deep_merge(self.cfg.get("text", {}), overrides or {})
        key = repr(sorted(text_cfg.items()))
        if key not in self._texts:
            self._texts[key] = product_texts(self.ds, text_cfg, self.paths.cache)
        return self._texts[key]

    def model_params(self, name: str) -> dict:
        return dict(self.cfg.get("models", {}).get(name, {}))
