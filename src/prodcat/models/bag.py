"""A k-fold bag is a model (AutoGluon's BaggedEnsembleModel): one base model's fold children, their
out-of-fold (OOF) predictions, whether the bag is finished, how its children predict new products, and an
optional `full` child trained on every training product for fast predictions (AutoGluon's `refit_full`).

On disk (one folder per concern, as the runner writes them):

    models/<dataset>/<model>/fold<K>/   fold child K: trained without fold K (model.json last)
    models/<dataset>/<model>/full/      the full child: trained on every product with the folds' settings
    models/<dataset>/<model>/once/      instead of the fold children (`train_only.once`): the one child,
                                        fitted on the train-only products alone; it predicts every training
                                        product out of sample (the OOF) and new products with `--use folds`;
                                        its full child (refit) learns from the train-only products and every
                                        training product together
    models/<dataset>/<model>/bag.json   written when the folds' OOF is joined: what the bag was made from
                                        and the fingerprint (SHA-256 of model.json) of every child joined
    oof/<dataset>/<model>/fold<K>.valid.npz, fold<K>.json, oof.npz    the held-out predictions

One rule says whether a bag is finished (`Bag.finished`): bag.json exists, was made from the expected
content (data, settings) and every child it lists is still the one saved. The runner, the stacker and the
Predictor ask the bag, never the folders.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pandas as pd

from prodcat.errors import DataError, NotTrainedError
from prodcat.models.base import MODEL_FILE, BaseModel, load_model, read_model_meta
from prodcat.outputs import BAG_FILE
from prodcat.probs import TopK, average
from prodcat.settings import DEFAULT_USE, MODEL_SPECS, USES  # noqa: F401 - declared with the settings, used here
from prodcat.storage import write_json

FULL = "full"  # the child trained on every product
ONCE = "once"  # the one child of a bag fitted once on the train-only products alone


def child_dir(fold: int | None) -> str:
    return FULL if fold is None else f"fold{fold}"


def fingerprint(path: Path) -> str:
    """SHA-256 of a child's model.json ('' when absent): model.json holds the checksums of every file of
    the child, so a retrained or replaced child has another fingerprint."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


class Bag:
    """One base model's k-fold bag under `folder` (models/<dataset>/<model>/); `oof`: its OOF folder (only
    where it is trained). Loaded children are kept (thread-safe) for repeated predictions."""

    def __init__(self, name: str, folder: Path, oof: Path | None = None):
        self.name, self.folder, self.oof_dir = name, Path(folder), oof
        self._children: dict[str, list[BaseModel]] = {}
        self._lock = threading.Lock()

    # -- what is saved ------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict | None:
        """bag.json (None: the bag was never finished)."""
        path = self.folder / BAG_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def k(self) -> int:
        meta = self.meta
        if meta is None:
            raise NotTrainedError(f"{self.folder}: the folds of '{self.name}' are not finished (train it first: "
                                  f"./run.sh train {self.name})")
        return int(meta["k"])

    def child_folder(self, fold: int | None) -> Path:
        return self.folder / child_dir(fold)

    @property
    def once(self) -> bool:
        """The bag is one child fitted on the train-only products alone (no folds, no separate full child)."""
        return bool((self.meta or {}).get(ONCE))

    def child_folders(self, k: int | None = None) -> list[Path]:
        """The folders of the children joined into the OOF: every fold child, or the one child."""
        if self.once:
            return [self.folder / ONCE]
        return [self.child_folder(f) for f in range(self.k if k is None else k)]

    def fingerprints(self, k: int | None = None) -> list[str]:
        """The fingerprint of each fold child, in fold order (a bag fitted once: its one child's)."""
        return [fingerprint(folder / MODEL_FILE) for folder in self.child_folders(k)]

    def finished(self, expect: dict | None = None) -> bool:
        """The rule: every fold child was joined into the OOF (bag.json), from the `expect`ed content (e.g.
        {"data": fingerprint, "settings": hash}), and each is still the child that was joined."""
        meta = self.meta
        if meta is None or any(meta.get(key) != value for key, value in (expect or {}).items()):
            return False
        return meta.get("children") == self.fingerprints(int(meta["k"]))

    def has_full(self, expect: dict | None = None) -> bool:
        """A finished bag whose full child was trained with the folds' content and settings (refit since the
        folds were joined, and not replaced since)."""
        meta = self.meta
        return (self.finished(expect) and bool(meta.get(FULL))
                and meta[FULL] == fingerprint(self.child_folder(None) / MODEL_FILE))

    # -- the training side (prodcat.training.runner writes, the bag records) ----------------------------------
    def child_done(self, fold: int | None, provenance: dict) -> bool:
        """The child is saved whole (files checked against its model.json) and was made from `provenance`
        (training content and settings): a fold's from its fold<K>.json beside the held-out predictions, the
        full child's from its model.json."""
        record = (self.oof_dir / f"fold{fold}.json") if fold is not None else self.child_folder(None) / MODEL_FILE
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            return False
        if any(meta.get(key) != value for key, value in provenance.items()):
            return False  # decided before hashing the child's files
        try:
            read_model_meta(self.child_folder(fold))
        except DataError:
            return False
        return True

    def record_once(self, provenance: dict) -> None:
        """bag.json of a bag fitted once: its one child (saved in once/) is the OOF's and the fold use's; a
        full child made from the same provenance is kept."""
        write_json(provenance | {"model": self.name, "k": 1, ONCE: True, FULL: self._kept_full(provenance),
                                 "children": [fingerprint(self.folder / ONCE / MODEL_FILE)]},
                   self.folder / BAG_FILE)

    def record(self, k: int, provenance: dict) -> None:
        """bag.json after the folds' OOF is joined: the provenance and every fold child's fingerprint; a full
        child made from the same provenance is kept."""
        write_json(provenance | {"model": self.name, "k": k, "children": self.fingerprints(k),
                                 FULL: self._kept_full(provenance)}, self.folder / BAG_FILE)

    def _kept_full(self, provenance: dict) -> str | None:
        """The recorded full child's fingerprint while it was made from `provenance`'s content and settings."""
        meta = self.meta
        full = meta.get(FULL) if meta else None
        keep = full and self.child_done(None, {key: provenance.get(key) for key in ("data", "settings")})
        return full if keep else None

    def record_full(self) -> None:
        """The full child (just saved) in bag.json."""
        write_json(self.meta | {FULL: fingerprint(self.child_folder(None) / MODEL_FILE)}, self.folder / BAG_FILE)

    # -- predicting new products --------------------------------------------------------------------------
    def check_use(self, use: str) -> None:
        if use not in USES:
            raise DataError(f"use must be one of {', '.join(USES)} (got {use!r})")
        if not self.finished():
            raise NotTrainedError(f"{self.folder}: '{self.name}' has no finished folds here (train it first: "
                                  f"./run.sh train {self.name})")
        if use == FULL and not self.has_full():
            raise NotTrainedError(f"{self.folder}: '{self.name}' has no full model trained on every product from "
                                  f"its current folds: run ./run.sh refit {self.name}, or predict with --use folds")

    def children(self, use: str = "folds") -> list[BaseModel]:
        """The loaded children that predict new products: [full] or every fold child (loaded once)."""
        with self._lock:
            if use not in self._children:
                self.check_use(use)
                folders = [self.child_folder(None)] if use == FULL else self.child_folders()
                self._children[use] = [load_model(folder) for folder in folders]
            return self._children[use]

    def child_predictions(self, frame: pd.DataFrame, use: str = "folds") -> list[TopK]:
        return [child.predict(frame) for child in self.children(use)]

    def predict(self, frame: pd.DataFrame, use: str = "folds") -> TopK:
        """TopK of every product: the full child's, or the average of the fold children's."""
        return average(self.child_predictions(frame, use))

    def saved_env(self) -> dict:
        """The ModelEnv the children were trained with (their text settings, top_k, seed)."""
        return json.loads((self.child_folders()[0] / MODEL_FILE).read_text())["env"]


def saved_bags(root: Path) -> dict[str, Bag]:
    """{model: Bag} of every finished bag under models/<dataset>/, in the registry's order."""
    if not Path(root).is_dir():
        return {}
    bags = {d.name: Bag(d.name, d) for d in sorted(Path(root).iterdir()) if (d / BAG_FILE).is_file()}
    order = list(MODEL_SPECS)
    names = sorted((n for n, b in bags.items() if b.finished()),
                   key=lambda n: (order.index(n) if n in order else len(order), n))
    return {n: bags[n] for n in names}
