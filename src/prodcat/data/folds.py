"""Seeded stratified k-fold assignment on category_id, saved once per dataset and reused.

Rule for small classes: the products of every class are shuffled (seeded) and dealt to folds
round-robin, each class starting where the previous one stopped (classes taken largest first).
A class with n >= k products thus has n//k or n//k+1 products in every fold; a class with n < k
products (often 1 or 2) has its products in n different folds, so each is held out exactly once.
Such a product can only be predicted right in OOF if its class still has training rows in the
other folds - a singleton never does, exactly as a never-seen class on the leaderboard. No class
is dropped, no error or warning is raised, and fold sizes differ by at most one product.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from prodcat.data.dataset import Dataset
from prodcat.errors import DataError
from prodcat.storage import write_json, write_parquet


def assign_folds(labels, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) for each label, stratified as described in the module docstring."""
    if k < 2:
        raise DataError(f"folds.k must be at least 2 (got {k})")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int16)
    classes, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((classes, -counts))  # largest classes first, ties by id: deterministic
    start = 0
    for c in classes[order]:
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return folds


def make_folds(ds: Dataset, k: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame({"id": ds.train["id"].to_numpy(),
                         "fold": assign_folds(ds.train["category_id"].to_numpy(), k, seed)})


def load_or_make_folds(ds: Dataset, path, k: int, seed: int, force: bool = False) -> pd.DataFrame:
    """Folds from `path` when they were made for this data with this k and seed; else made and saved (one
    process at a time: a second waits on folds.lock, then reads what the first made)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        return _load_or_make(ds, path, k, seed, force)


def _load_or_make(ds: Dataset, path, k: int, seed: int, force: bool) -> pd.DataFrame:
    meta_path = path.with_suffix(".json")
    meta = {"fingerprint": ds.labels_fingerprint, "k": int(k), "seed": int(seed)}
    if path.exists() and meta_path.exists() and not force:
        if json.loads(meta_path.read_text()) == meta:
            return pd.read_parquet(path)
    folds = make_folds(ds, k, seed)
    write_parquet(folds, path)
    write_json(meta, meta_path)
    return folds
