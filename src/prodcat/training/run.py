"""A run: one dataset, its resolved settings and the workdir its outputs go to; shared by every command."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

import prodcat.models  # noqa: F401 - every base model registers its settings (prodcat.settings.MODEL_SPECS)
from prodcat.data.dataset import Dataset, dataset_name, load_dataset
from prodcat.data.folds import load_or_make_folds
from prodcat.outputs import Paths, workdir_of
from prodcat.settings import Resolved, resolve_config


@dataclass
class Run:
    cfg: dict  # every setting, resolved (prodcat.settings)
    ds: Dataset
    paths: Paths
    settings: Resolved | None = None
    config_file: Path | None = None  # the config given (None: configs/default.yaml)

    @classmethod
    def open(cls, data: str | Path | None = None, config: str | Path | None = None,
             workdir: str | Path | None = None, sets: dict | None = None,
             extra: str | Path | None = None) -> "Run":
        """Check the config (before any data is read), load the dataset (with the `extra` labelled products
        added to its training rows), then resolve the settings with the size rules for its number of
        training products."""
        first = resolve_config(config, sets)
        only = first.values["train_only"]
        ds = load_dataset(Path(data or first.values["data"]), name=first.values["dataset_name"], extra=extra,
                          train_only=only["file"], train_only_rows=train_only_drawn(only),
                          seed=first.values["seed"], holdout=only["holdout"], relabel=first.values["relabel"])
        settings = resolve_config(config, sets, len(ds.train))
        cfg = settings.values
        root = workdir_of(workdir, cfg)
        for key, value, source in (("data", data, "--data"), ("workdir", workdir, "--workdir")):
            if value is not None and str(value) != str(cfg[key]):
                cfg[key], settings.sources[key] = str(value), source
        return cls(cfg=cfg, ds=ds, paths=Paths(root, ds.name), settings=settings,
                   config_file=Path(config).resolve() if config else None)

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def k(self) -> int:
        return int(self.cfg["folds"]["k"])

    @property
    def top_k(self) -> int:
        return int(self.cfg["top_k"])

    @cached_property
    def folds(self) -> pd.DataFrame:
        return load_or_make_folds(self.ds, self.paths.folds, self.k, self.seed)

    @cached_property
    def env(self):
        """What every model shares: text settings, top_k, seed and the content-keyed cache folder."""
        from prodcat.models.base import ModelEnv

        return ModelEnv(text=dict(self.cfg["text"]), top_k=self.top_k, seed=self.seed, cache=self.paths.cache)

    def texts(self, frame: pd.DataFrame) -> pd.Series:
        """Product texts of `frame` (index: ids) with the shared text settings."""
        return self.env.texts(frame)

    def model_params(self, name: str) -> dict:
        return dict(self.cfg["models"].get(name, {}))

    def train_only_rows(self, model: str) -> int | None:
        """How many of the train-only products base model `model` fits on (None: all drawn)."""
        only = self.cfg["train_only"]
        rows = only["models"].get(model, only["rows"])
        return None if rows is None else int(rows)

    def fits_once(self, model: str) -> bool:
        """Model `model` is fitted once on the train-only products alone (`train_only.once`), not per fold."""
        return model in self.cfg["train_only"]["once"] and self.ds.train_only is not None

    def fit_fingerprint(self, model: str) -> str:
        """Hash of what base model `model` fits on: its outputs are reused only while it is unchanged."""
        return self.ds.fit_fingerprint(self.train_only_rows(model))


def train_only_drawn(only: dict) -> int | None:
    """How many train-only products to draw: the most any model is given (None: all)."""
    counts = [only["rows"], *only["models"].values()]
    return None if None in counts else int(max(counts))


def settings_and_paths(data=None, config=None, workdir=None, sets: dict | None = None) -> tuple[dict, Paths]:
    """(the resolved settings, the Paths of the config's dataset and workdir), without reading the training
    data (predict, serve and review need no more)."""
    cfg = resolve_config(config, sets).values
    return cfg, Paths(workdir_of(workdir, cfg), dataset_name(data or cfg["data"], cfg["dataset_name"]))
