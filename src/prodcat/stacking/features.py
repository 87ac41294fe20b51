"""The stacker's candidates and their features: per (product, candidate class) pair, features that mean the
same for every class (each model's probability, rank, subtree masses, ...; shared agreement, frequency,
depth; the product's text sizes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from prodcat.probs import NO_LABEL, TopK


class NodeIndex:
    """Tree nodes as dense indices, with each node's parent/grandparent and depth per index."""

    def __init__(self, tree):
        self.tree = tree
        self.ids = np.array(sorted(tree.parent), dtype=np.int64)
        self.depth = np.array([tree.depth(n) for n in self.ids], np.int32)
        self.anc1 = self.index(np.array([tree.ancestor_at(n, 1) if self.depth[i] > 1 else -1
                                         for i, n in enumerate(self.ids)]))
        self.anc2 = self.index(np.array([tree.ancestor_at(n, 2) if self.depth[i] > 2 else -1
                                         for i, n in enumerate(self.ids)]))
        self.max_depth = int(self.depth.max())
        # path[i, d] = index of the node's ancestor at depth d+1 (-1 past its depth)
        self.path = np.full((len(self.ids), self.max_depth), -1, np.int32)
        for i, n in enumerate(self.ids):
            p = self.index(np.array(tree.path(n)))
            self.path[i, :len(p)] = p

    def category(self, idx: np.ndarray) -> np.ndarray:
        """Node indices -> category ids (NO_LABEL for -1)."""
        idx = np.asarray(idx)
        return np.where(idx >= 0, self.ids[np.maximum(idx, 0)], NO_LABEL)

    def index(self, node_ids: np.ndarray) -> np.ndarray:
        """Category ids -> node indices (-1 for NO_LABEL and ids not in the tree)."""
        node_ids = np.asarray(node_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.ids, node_ids), 0, len(self.ids) - 1)
        return np.where(self.ids[pos] == node_ids, pos, -1).astype(np.int32)


def candidate_pairs(parts: list[TopK], nodes: NodeIndex, per_model: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, node index) of every candidate, sorted by row then node: the union of the models' tops."""
    n = len(parts[0])
    labs = np.concatenate([nodes.index(p.labels[:, :per_model]) for p in parts], axis=1)
    rows = np.repeat(np.arange(n, dtype=np.int64), labs.shape[1])
    labs = labs.ravel().astype(np.int64)
    ok = labs >= 0
    keys = np.unique(rows[ok] * len(nodes.ids) + labs[ok])
    return (keys // len(nodes.ids)).astype(np.int64), (keys % len(nodes.ids)).astype(np.int32)


def pair_features(parts: dict[str, TopK], nodes: NodeIndex, rows: np.ndarray, cls: np.ndarray,
                  freq: np.ndarray, freq_index: np.ndarray, product: pd.DataFrame | None = None) -> pd.DataFrame:
    """Feature frame of the (row, class) pairs. `freq` (m, n_nodes): training counts per class as the base
    models saw them, `freq_index` (n_rows,): each product's row of it; `product`: per-product features."""
    feats = {}
    firsts = []
    probs = []
    for name, p in parts.items():
        lab = nodes.index(p.labels)
        sc = p.scores.astype(np.float32)
        f = _model_pair_features(lab, sc, rows, cls, nodes.anc1, nodes.anc2)
        miss = p.missing[rows]
        top = sc[:, 0].astype(np.float32)
        ent = _entropy(sc)
        nan = np.float32(np.nan)
        feats[f"{name}_prob"] = np.where(miss, nan, f[:, 0])
        feats[f"{name}_rank"] = np.where(miss, nan, f[:, 1])
        feats[f"{name}_mass_parent"] = np.where(miss, nan, f[:, 2])
        feats[f"{name}_mass_grand"] = np.where(miss, nan, f[:, 3])
        feats[f"{name}_ratio"] = np.where(miss, nan, f[:, 0] / np.maximum(top[rows], 1e-6))
        feats[f"{name}_top"] = np.where(miss, nan, top[rows])
        feats[f"{name}_entropy"] = np.where(miss, nan, ent[rows])
        first = (f[:, 1] == 1) & ~miss
        feats[f"{name}_first"] = first.astype(np.float32)
        if p.missing.any():
            feats[f"{name}_missing"] = miss.astype(np.float32)
        for flag, values in p.flags.items():
            feats[f"{name}_{flag}"] = np.asarray(values, np.float32)[rows]
        firsts.append(first)
        probs.append(np.where(miss, np.nan, f[:, 0]))
    probs = np.vstack(probs)
    feats["n_first"] = np.sum(firsts, axis=0).astype(np.float32)
    with np.errstate(all="ignore"):
        feats["mean_prob"] = np.nan_to_num(np.nanmean(probs, axis=0)).astype(np.float32)
        feats["max_prob"] = np.nan_to_num(np.nanmax(probs, axis=0)).astype(np.float32)
    feats["freq"] = freq[freq_index[rows], cls].astype(np.float32)
    feats["depth"] = nodes.depth[cls].astype(np.float32)
    feats["n_candidates"] = np.bincount(rows, minlength=int(rows.max()) + 1 if len(rows) else 0)[rows].astype(
        np.float32)
    for col in (product.columns if product is not None else []):
        feats[col] = product[col].to_numpy(np.float32)[rows]
    return pd.DataFrame(feats)


def product_features(frame: pd.DataFrame, text_cfg: dict) -> pd.DataFrame:
    """Per product, the same for every candidate: how much text it has (models differ in how they cope)."""
    from prodcat.data.text import product_texts

    texts = product_texts(frame, text_cfg).tolist()
    return pd.DataFrame({
        "text_words": np.array([t.count(" ") + 1 for t in texts], np.float32),
        "title_chars": np.array([len(t) if isinstance(t, str) else 0 for t in frame["title"].tolist()], np.float32),
        "has_description": frame["short_description"].notna().to_numpy(np.float32),
        "has_characteristics": frame["name_value_characteristics"].notna().to_numpy(np.float32),
    })


def monotone_constraints(columns: list[str]) -> list[int]:
    """+1 for the candidate's probability-like features, -1 for its ranks, 0 otherwise."""
    up = ("_prob", "_mass_parent", "_mass_grand", "_ratio", "_first", "n_first")
    return [1 if c.endswith(up) else -1 if c.endswith("_rank") else 0 for c in columns]


def _entropy(scores: np.ndarray) -> np.ndarray:
    s = np.clip(scores.astype(np.float32), 1e-9, None)
    s = s / s.sum(axis=1, keepdims=True)
    return -(s * np.log(s)).sum(axis=1).astype(np.float32)


@njit(cache=True)
def _model_pair_features(lab, sc, rows, cls, anc1, anc2):  # pragma: no cover - numba
    """Per pair: probability, rank (K+1 when absent), mass on the parent and the grandparent subtree."""
    n_pairs = len(rows)
    k = lab.shape[1]
    out = np.zeros((n_pairs, 4), np.float32)
    for i in range(n_pairs):
        r = rows[i]
        c = cls[i]
        a1 = anc1[c]
        a2 = anc2[c]
        out[i, 1] = k + 1
        for j in range(k):
            lj = lab[r, j]
            if lj < 0:
                continue
            s = sc[r, j]
            if lj == c:
                out[i, 0] = s
                out[i, 1] = j + 1
            if a1 >= 0 and anc1[lj] == a1:
                out[i, 2] += s
            if a2 >= 0 and anc2[lj] == a2:
                out[i, 3] += s
    return out
