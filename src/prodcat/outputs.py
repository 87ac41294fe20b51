"""Stored outputs: where a dataset's generated files live, which models are finished, and reading the
stored OOF probabilities back (the writes themselves go through prodcat.storage)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STACK = "stack"  # the stacker's outputs: oof/<dataset>/stack/, models/<dataset>/stack/
TRAIN_IDS = "train_ids.npz"  # beside the saved models: the ids of the products they were trained on


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

    @property
    def review_db(self) -> Path:
        """The review store's SQLite file (the default store: prodcat.review)."""
        return self._dir("review") / "review.db"


def load_oof(run, name: str):
    """The stored OOF TopK of a model, in the training rows' order."""
    from prodcat.probs import TopK

    return TopK.load(run.paths.oof(name) / "oof.npz").align(run.ds.train["id"].to_numpy())


def finished_models(run) -> list[str]:
    """Models whose OOF probabilities are complete for this dataset's training rows: the finished bags
    (prodcat.models.bag, in registry order), then the stacker."""
    from prodcat.models.bag import saved_bags

    names = [n for n, bag in saved_bags(run.paths.models_root).items()
             if bag.finished({"data": run.fit_fingerprint(n)}) and (run.paths.oof(n) / "oof.npz").exists()]
    meta = run.paths.oof(STACK) / "complete.json"
    if meta.exists() and json.loads(meta.read_text()).get("data") == run.ds.fingerprint:
        names.append(STACK)
    return names


def base_models(run) -> list[str]:
    """Finished base models (the stacker's own output is not a base model)."""
    return [m for m in finished_models(run) if m != STACK]
