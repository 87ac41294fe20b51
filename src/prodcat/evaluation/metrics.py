"""Scores: hierarchical F1 (the task's metric), flat weighted F1 and accuracy."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from prodcat.data.tree import CategoryTree


def hierarchical_counts(y_true, y_pred, tree: CategoryTree) -> np.ndarray:
    """Per product: (|A(pred) & A(true)|, |A(pred)|, |A(true)|), A = ancestors incl. self, root excluded.

    A prediction that is not in the tree (e.g. -1 for 'no prediction') has an empty ancestor set.
    """
    out = np.zeros((len(y_true), 3), dtype=np.int64)
    cache: dict[tuple[int, int], tuple[int, int, int]] = {}
    for i, (t, p) in enumerate(zip(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist())):
        key = (t, p)
        if key not in cache:
            at = tree.ancestors(t)
            ap = tree.ancestors(p) if p in tree else frozenset()
            cache[key] = (len(at & ap), len(ap), len(at))
        out[i] = cache[key]
    return out


def hf1_of_counts(counts: np.ndarray) -> float:
    """Micro hF1 of rows of `hierarchical_counts` (NaN for no rows): 2PR / (P + R) with P = inter/npred,
    R = inter/ntrue, i.e. 2 inter / (npred + ntrue)."""
    inter, npred, ntrue = np.asarray(counts).reshape(-1, 3).sum(axis=0)
    return float(2 * inter / (npred + ntrue)) if npred + ntrue else float("nan")


def hierarchical_f1(y_true, y_pred, tree: CategoryTree) -> float:
    """Micro-averaged hierarchical F1 over products."""
    if len(y_true) == 0:
        return float("nan")
    return hf1_of_counts(hierarchical_counts(y_true, y_pred, tree))


def score(y_true, y_pred, tree: CategoryTree) -> dict[str, float]:
    """{'hF1', 'weighted_F1', 'accuracy', 'n'} for one set of predictions."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if len(y_true) == 0:
        return {"hF1": float("nan"), "weighted_F1": float("nan"), "accuracy": float("nan"), "n": 0}
    return {
        "hF1": hierarchical_f1(y_true, y_pred, tree),
        "weighted_F1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "n": int(len(y_true)),
    }


def hf1_by_top_level(y_true, y_pred, tree: CategoryTree) -> pd.DataFrame:
    """hF1 per top-level category of the true leaf: columns top_level, title, n, hF1."""
    y_true = np.asarray(y_true)
    counts = hierarchical_counts(y_true, y_pred, tree)
    top = np.array([tree.top_level(t) for t in y_true.tolist()])
    rows = []
    for t in np.unique(top):
        rows.append({"top_level": int(t), "title": tree.titles.get(int(t), ""), "n": int((top == t).sum()),
                     "hF1": hf1_of_counts(counts[top == t])})
    return pd.DataFrame(rows).sort_values("n", ascending=False, ignore_index=True)
