"""Compact class probabilities: the top-K classes of each product with float16 scores.

This is the one format every base model writes (out-of-fold and test) and every consumer reads
(scores, submission, stacker). `missing` marks products a model could not predict (e.g. no photo);
`flags` holds extra per-product values: booleans (e.g. CoCa's `text_only`) or numbers (the kNN's `nearest`
similarity), stored with their kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from prodcat.storage import write_npz

NO_LABEL = -1


@dataclass
class TopK:
    ids: np.ndarray  # (n,) int64 product ids
    labels: np.ndarray  # (n, K) int64 category ids, best first; NO_LABEL pads
    scores: np.ndarray  # (n, K) float16 probabilities, descending
    missing: np.ndarray  # (n,) bool: the model made no prediction for this product
    flags: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.labels = _rows(np.asarray(self.labels, dtype=np.int64), len(self.ids))
        self.scores = _rows(np.asarray(self.scores, dtype=np.float16), len(self.ids))
        self.missing = np.asarray(self.missing, dtype=bool).reshape(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.labels.shape[1]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, ids, proba: np.ndarray, classes, k: int, missing=None, flags=None) -> "TopK":
        """From an (n, C) probability matrix whose columns are the category ids `classes`."""
        proba = np.asarray(proba, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int64)
        n, c = proba.shape
        k_eff = min(k, c)
        if n == 0:
            return cls.empty(ids, k)
        top = np.argpartition(-proba, k_eff - 1, axis=1)[:, :k_eff]
        order = np.argsort(-np.take_along_axis(proba, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return cls.from_ranked(ids, classes[top], np.take_along_axis(proba, top, axis=1), k, missing, flags)

    @classmethod
    def from_ranked(cls, ids, labels, scores, k: int, missing=None, flags=None) -> "TopK":
        """From per-product labels/scores already sorted best first; pads or cuts to K columns."""
        n = len(ids)
        labels = _rows(np.asarray(labels, dtype=np.int64), n)[:, :k]
        scores = _rows(np.asarray(scores, dtype=np.float32), n)[:, :k]
        pad = k - labels.shape[1]
        if pad > 0:
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=NO_LABEL)
            scores = np.pad(scores, ((0, 0), (0, pad)))
        missing = np.zeros(n, bool) if missing is None else np.asarray(missing, bool)
        labels = np.where(missing[:, None], NO_LABEL, labels)
        scores = np.where(missing[:, None], 0.0, scores)
        return cls(ids, labels, scores, missing, dict(flags or {}))

    @classmethod
    def empty(cls, ids, k: int) -> "TopK":
        """All products missing (the model has nothing to say about them)."""
        n = len(ids)
        return cls(ids, np.full((n, k), NO_LABEL), np.zeros((n, k)), np.ones(n, bool))

    # -- views ----------------------------------------------------------------------------------
    def top1(self) -> np.ndarray:
        """Best category per product (NO_LABEL where missing)."""
        return self.labels[:, 0].copy()

    def take(self, index) -> "TopK":
        index = np.asarray(index)
        return TopK(self.ids[index], self.labels[index], self.scores[index], self.missing[index],
                    {k: v[index] for k, v in self.flags.items()})

    def align(self, ids) -> "TopK":
        """Rows reordered to `ids`; ids this object does not hold raise KeyError."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, ids, sorter=order)
        pos = np.clip(pos, 0, max(len(order) - 1, 0))
        found = len(order) > 0 and np.array_equal(self.ids[order[pos]], ids)
        if not found:
            raise KeyError(f"{int((self.ids[order[pos]] != ids).sum()) if len(order) else len(ids)} ids not found")
        return self.take(order[pos])

    def to_sparse(self, classes) -> sp.csr_matrix:
        """(n, C) sparse probabilities over the category ids `classes` (labels outside are dropped)."""
        classes = np.asarray(classes, dtype=np.int64)
        col = np.searchsorted(classes, self.labels)
        col = np.clip(col, 0, len(classes) - 1)
        ok = (self.labels != NO_LABEL) & (classes[col] == self.labels)
        rows = np.repeat(np.arange(len(self)), self.k).reshape(len(self), self.k)
        return sp.csr_matrix((self.scores[ok].astype(np.float32), (rows[ok], col[ok])),
                             shape=(len(self), len(classes)))

    def to_dense(self, classes) -> np.ndarray:
        return self.to_sparse(classes).toarray()

    # -- storage --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        arrays = {"ids": self.ids, "labels": self.labels.astype(np.int32), "scores": self.scores,
                  "missing": self.missing}
        arrays.update({f"flag_{k}": _flag(v) for k, v in self.flags.items()})
        write_npz(arrays, path)

    @classmethod
    def load(cls, path: str | Path) -> "TopK":
        with np.load(path) as z:
            flags = {k[5:]: z[k] for k in z.files if k.startswith("flag_")}
            return cls(z["ids"], z["labels"], z["scores"], z["missing"], flags)


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    """`a` as n rows (zero rows keep the column count, e.g. an empty file to predict)."""
    if n == 0:
        return a.reshape(0, a.shape[1] if a.ndim == 2 else 0)
    return a.reshape(n, -1)


def average(parts: list[TopK], k: int | None = None, weights=None) -> TopK:
    """Mean of several TopK over the same products (e.g. fold-averaged test probabilities).

    A product missing in one part is averaged over the parts that predicted it; missing in all, it
    stays missing. Boolean flags are OR-ed, numeric ones averaged.
    """
    if not parts:
        raise ValueError("nothing to average")
    if len(parts) == 1 and k in (None, parts[0].k):
        return parts[0]  # a full child's predictions: nothing to average
    ids = parts[0].ids
    parts = [parts[0]] + [p.align(ids) for p in parts[1:]]
    k = k or max(p.k for p in parts)
    weights = np.ones(len(parts)) if weights is None else np.asarray(weights, float)
    labels = np.concatenate([p.labels[p.labels != NO_LABEL] for p in parts])
    classes = np.unique(labels) if len(labels) else np.array([0], np.int64)
    total = None
    norm = np.zeros(len(ids))
    for w, p in zip(weights, parts):
        m = p.to_sparse(classes) * w
        total = m if total is None else total + m
        norm += w * (~p.missing)
    missing = norm == 0
    total = sp.diags(1.0 / np.where(missing, 1.0, norm)) @ total
    flags = {}
    for p in parts:
        for name, v in p.flags.items():
            v = _flag(v)
            flags[name] = (flags.get(name, np.zeros(len(ids), bool)) | v if v.dtype == bool
                           else flags.get(name, np.zeros(len(ids), np.float32)) + v / len(parts))
    return from_sparse(ids, total.tocsr(), classes, k, missing, flags)


def _flag(values) -> np.ndarray:
    """A flag's values as stored: booleans stay booleans, numbers become float32."""
    values = np.asarray(values)
    return values if values.dtype == bool else values.astype(np.float32)


def from_sparse(ids, matrix: sp.csr_matrix, classes, k: int, missing=None, flags=None) -> TopK:
    """Top-K of each row of a sparse (n, C) score matrix, memory-light for large C."""
    n = matrix.shape[0]
    labels = np.full((n, k), NO_LABEL, np.int64)
    scores = np.zeros((n, k), np.float32)
    classes = np.asarray(classes)
    for i in range(n):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        if hi == lo:
            continue
        data, cols = matrix.data[lo:hi], matrix.indices[lo:hi]
        top = np.argsort(-data, kind="stable")[:k]
        labels[i, :len(top)] = classes[cols[top]]
        scores[i, :len(top)] = data[top]
    return TopK.from_ranked(ids, labels, scores, k, missing, flags)
