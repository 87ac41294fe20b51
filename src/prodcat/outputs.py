"""The on-disk layout of a workdir: where a dataset's generated files live and what the saved files are
called (the writes themselves go through prodcat.storage; which models are finished: prodcat.training.oof)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STACK = "stack"  # the stacker's outputs: oof/<dataset>/stack/, models/<dataset>/stack/
TREE_FILE = "categories_tree.csv"  # beside the saved models: the tree they predict leaves of
TRAIN_IDS = "train_ids.npz"  # beside the saved models: the ids of the products they were trained on
BAG_FILE = "bag.json"  # models/<dataset>/<model>/: a finished bag's description (prodcat.models.bag)
STACKER_FILE = "stacker.json"  # models/<dataset>/stack/: the stacker's description, written last
CONFIDENCE_FILE = "oof_confidence.npz"  # beside a saved model: its OOF confidences (prodcat.evaluation.review)


def confidence_file(without: str | None = None) -> str:
    """The OOF confidences beside a model; `without` a model: the stacker's as if that model said nothing."""
    return CONFIDENCE_FILE if without is None else f"oof_confidence_without_{without}.npz"


@dataclass(frozen=True)
class Paths:
    """Where a dataset's generated outputs live; different datasets never share a folder."""

    workdir: Path
    dataset: str

    @classmethod
    def of_models(cls, models_root: str | Path) -> "Paths":
        """The Paths whose models_root is `models_root` (<workdir>/models/<dataset>/)."""
        root = Path(models_root).resolve()
        return cls(root.parent.parent, root.name)

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


def workdir_of(given, cfg: dict) -> Path:
    """--workdir, else $PRODCAT_WORKDIR, else the config's `workdir`."""
    return Path(given or os.environ.get("PRODCAT_WORKDIR") or cfg["workdir"])
