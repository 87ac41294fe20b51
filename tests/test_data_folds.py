import warnings

import numpy as np
import pandas as pd

from prodcat.data.dataset import load_dataset
from prodcat.data.folds import assign_folds, load_or_make_folds


def test_stratified_balanced_and_seeded():
    labels = np.repeat([1, 2, 3], [50, 23, 7])
    folds = assign_folds(labels, k=5, seed=0)
    assert np.array_equal(folds, assign_folds(labels, k=5, seed=0))
    assert not np.array_equal(folds, assign_folds(labels, k=5, seed=1))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for c in (1, 2, 3):
        per = np.bincount(folds[labels == c], minlength=5)
        assert per.max() - per.min() <= 1


def test_rare_classes_spread_without_warnings():
    labels = np.array([1] * 20 + [2] + [3, 3] + [4, 4, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = assign_folds(labels, k=5, seed=3)
    for c, n in ((2, 1), (3, 2), (4, 3)):
        assert len(set(folds[labels == c])) == n  # each product of a small class in its own fold


def test_saved_and_reused(tiny, tmp_path):
    ds = load_dataset(tiny)
    path = tmp_path / "folds" / "tiny" / "folds.parquet"
    first = load_or_make_folds(ds, path, k=3, seed=7)
    mtime = path.stat().st_mtime_ns
    again = load_or_make_folds(ds, path, k=3, seed=7)
    assert path.stat().st_mtime_ns == mtime and again.equals(first)
    other = load_or_make_folds(ds, path, k=4, seed=7)  # other settings: made anew
    assert other["fold"].nunique() == 4
    assert list(pd.read_parquet(path).columns) == ["id", "fold"]
