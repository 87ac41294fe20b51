"""From ranker scores to probabilities and a decided leaf: per-product softmax with a fitted temperature,
the fold rankers' average, and argmax or expected-hF1 decoding (the Dinkelbach argument: per product the
leaf whose path maximises the sum over its nodes of P(subtree) - F/2, F the hF1 level reached)."""
from __future__ import annotations

import numpy as np

from prodcat.probs import NO_LABEL, TopK
from prodcat.stacking.features import NodeIndex


def group_softmax(rows: np.ndarray, scores: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of the pair scores within each product (rows sorted)."""
    z = scores / temperature
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    mx = np.maximum.reduceat(z, starts) if len(z) else z
    e = np.exp(z - np.repeat(mx, np.diff(np.r_[starts, len(z)])))
    tot = np.add.reduceat(e, starts) if len(z) else e
    return e / np.repeat(tot, np.diff(np.r_[starts, len(z)]))


def fit_temperature(rows, scores, is_true) -> float:
    """Temperature minimising the NLL of the true candidate (products whose truth is a candidate)."""
    if not np.any(is_true):
        return 1.0  # no product has its truth among the candidates: nothing to calibrate on
    has = np.zeros(int(rows.max()) + 1, bool)
    has[rows[is_true]] = True
    keep = has[rows]
    r, s, t = rows[keep], scores[keep], is_true[keep]
    best, best_nll = 1.0, np.inf
    for temp in np.exp(np.linspace(np.log(0.05), np.log(20), 41)):
        p = group_softmax(r, s, temp)[t]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best, best_nll = float(temp), nll
    return best


def decode(rows, cls, proba, nodes: NodeIndex, n_rows: int, method: str, f_level: float = 0.9) -> np.ndarray:
    """Chosen node index per product (-1 for products without candidates)."""
    out = np.full(n_rows, -1, np.int64)
    if len(rows) == 0:
        return out
    if method == "argmax":
        order = np.lexsort((-proba, rows))
        first = np.r_[True, rows[order][1:] != rows[order][:-1]]
        out[rows[order][first]] = cls[order][first]
        return out
    if method != "expected_hf1":
        raise ValueError(f"unknown decoding '{method}' (argmax, expected_hf1)")
    # node mass per product: P(subtree a) = sum of candidate probabilities below a
    path = nodes.path[cls]  # (pairs, D)
    n_nodes = len(nodes.ids)
    masses = []
    for d in range(path.shape[1]):
        a = path[:, d].astype(np.int64)
        ok = a >= 0
        key = rows * n_nodes + np.where(ok, a, 0)
        uniq, inv = np.unique(key, return_inverse=True)
        mass = np.bincount(inv, weights=proba * ok, minlength=len(uniq))[inv]
        masses.append((mass, ok))
    gain = np.zeros(len(rows))
    for mass, ok in masses:
        gain += np.where(ok, mass - f_level / 2, 0.0)
    return decode(rows, cls, gain, nodes, n_rows, "argmax")


def _average_test(parts, temperature: float, n_nodes: int):
    """Mean over rankers of the per-product softmax of their pair scores, on the union of candidates."""
    keys = np.concatenate([r * n_nodes + c for r, c, _ in parts])
    proba = np.concatenate([group_softmax(r, s, temperature) for r, _, s in parts]) / len(parts)
    uniq, inv = np.unique(keys, return_inverse=True)
    total = np.bincount(inv, weights=proba, minlength=len(uniq))
    return (uniq // n_nodes).astype(np.int64), (uniq % n_nodes).astype(np.int32), total


def _to_topk(ids, rows, cls, proba, decided, nodes: NodeIndex, k: int) -> TopK:
    """Stacked probabilities as TopK: the decided leaf first, then the others by probability."""
    n = len(ids)
    labels = np.full((n, k), NO_LABEL, np.int64)
    scores = np.zeros((n, k), np.float32)
    # rank key: decided leaf first, then probability
    first = cls == decided[rows]
    order = np.lexsort((-proba, ~first, rows))
    r, c, pr = rows[order], cls[order], proba[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]]) if len(r) else np.array([], int)
    pos = np.arange(len(r)) - np.repeat(starts, np.diff(np.r_[starts, len(r)]))
    keep = pos < k
    labels[r[keep], pos[keep]] = nodes.ids[c[keep]]
    scores[r[keep], pos[keep]] = pr[keep]
    missing = labels[:, 0] == NO_LABEL
    return TopK(ids, labels, scores, missing)
