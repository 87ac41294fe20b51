"""Where a model's out-of-fold mistakes are: how far the wrong leaf is from the true one in the tree, how
accuracy depends on the class's size, how many mistakes involve catch-all leaves (a leaf titled like its
parent, e.g. `Косметика > Косметика`), how often the predicted path is right down to each depth and
the hF1 to each depth, and which other models get its mistakes right.
`./run.sh errors [--model NAME]` prints it for any finished model."""
from __future__ import annotations

import numpy as np
import pandas as pd

from prodcat.evaluation.metrics import hf1_of_counts, hierarchical_counts

SIZE_BUCKETS = ((1, 2), (3, 5), (6, 19), (20, 99), (100, None))


def catch_all_leaves(tree) -> set[int]:
    """Leaves whose title repeats their parent's (case and spaces ignored)."""
    def norm(t):
        return " ".join(str(t or "").lower().split())

    return {n for n in tree.leaves if norm(tree.titles.get(n)) == norm(tree.titles.get(tree.parent.get(n)))}


def mistake_kinds(y: np.ndarray, pred: np.ndarray, tree) -> pd.DataFrame:
    """Share of the wrong predictions that are a sibling of the truth (same parent), elsewhere under the same
    top-level category, or in another top-level category."""
    wrong = (pred != y) & (pred >= 0)
    kinds = []
    for t, p in zip(y[wrong].tolist(), pred[wrong].tolist()):
        if tree.parent.get(t) == tree.parent.get(p):
            kinds.append("sibling (same parent)")
        elif tree.top_level(t) == tree.top_level(p):
            kinds.append("same top level, other branch")
        else:
            kinds.append("other top level")
    counts = pd.Series(kinds, dtype=object).value_counts()
    order = ["sibling (same parent)", "same top level, other branch", "other top level"]
    counts = counts.reindex(order, fill_value=0)
    return pd.DataFrame({"kind": order, "errors": counts.to_numpy(),
                         "share": counts.to_numpy() / max(int(wrong.sum()), 1)})


def by_class_size(y: np.ndarray, pred: np.ndarray, tree) -> pd.DataFrame:
    """Products, accuracy and hF1 by the number of training products of their class."""
    sizes = pd.Series(y).map(pd.Series(y).value_counts()).to_numpy()
    counts = hierarchical_counts(y, pred, tree)
    rows = []
    for lo, hi in SIZE_BUCKETS:
        sel = (sizes >= lo) & (sizes <= (hi if hi is not None else np.inf))
        rows.append({"class size": f"{lo}-{hi}" if hi else f"{lo}+", "products": int(sel.sum()),
                     "share": float(sel.mean()) if len(sel) else np.nan,
                     "accuracy": float((pred[sel] == y[sel]).mean()) if sel.any() else np.nan,
                     "hF1": hf1_of_counts(counts[sel])})
    return pd.DataFrame(rows)


def catch_all_share(y: np.ndarray, pred: np.ndarray, tree) -> dict:
    """How many mistakes have a catch-all leaf as the truth or as the prediction."""
    catch = np.array(sorted(catch_all_leaves(tree)), dtype=np.int64)
    wrong = pred != y
    involved = wrong & (np.isin(y, catch) | np.isin(pred, catch))
    return {"catch-all leaves": len(catch), "products in them": int(np.isin(y, catch).sum()),
            "errors involving one": int(involved.sum()), "share of errors": float(involved.sum() / max(wrong.sum(), 1))}


def by_depth(y: np.ndarray, pred: np.ndarray, tree) -> pd.DataFrame:
    """Per depth d: of the products whose true leaf is at least that deep, the share whose predicted path has
    the true node at depth d; and hF1 to depth d (every product, both paths cut below depth d: the hF1 of a
    tree that stopped at that depth)."""
    rows = []
    known = {int(n): tree.path(int(n)) for n in np.unique(np.r_[y, pred]) if n in tree}
    paths_t = [known[int(t)] for t in y.tolist()]
    paths_p = [known.get(int(p), []) for p in pred.tolist()]
    common = np.array([_common_prefix(a, b) for a, b in zip(paths_t, paths_p)], np.int64)
    len_t = np.array([len(p) for p in paths_t], np.int64)
    len_p = np.array([len(p) for p in paths_p], np.int64)
    for d in range(1, int(len_t.max(initial=0)) + 1):
        has = len_t >= d
        counts = np.c_[np.minimum(common, d), np.minimum(len_p, d), np.minimum(len_t, d)]
        rows.append({"depth": d, "products": int(has.sum()),
                     "right down to this depth": float((common[has] >= d).mean()) if has.any() else np.nan,
                     "hF1 to this depth": hf1_of_counts(counts)})
    return pd.DataFrame(rows)


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for u, v in zip(a, b):
        if u != v:
            break
        n += 1
    return n


def others_right(y: np.ndarray, pred: np.ndarray, others: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per other model (its top-1 leaves, -1: no prediction): how many of this model's mistakes it gets
    right - where its view differs."""
    wrong = pred != y
    rows = []
    for name, o in others.items():
        fixed = wrong & (o == y)
        rows.append({"model": name, "right where this one is wrong": int(fixed.sum()),
                     "share of its mistakes": float(fixed.sum() / max(int(wrong.sum()), 1)),
                     "share of products": float(fixed.mean()) if len(y) else np.nan})
    return pd.DataFrame(rows, columns=["model", "right where this one is wrong", "share of its mistakes",
                                       "share of products"])


def error_report(y: np.ndarray, pred: np.ndarray, tree) -> dict[str, pd.DataFrame]:
    """Every table of the error analysis for true leaves `y` and predictions `pred` (-1: no prediction)."""
    return {"mistakes": mistake_kinds(y, pred, tree), "class_size": by_class_size(y, pred, tree),
            "catch_all": pd.DataFrame([catch_all_share(y, pred, tree)]), "depth": by_depth(y, pred, tree)}
