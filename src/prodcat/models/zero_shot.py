"""Zero-shot suggestions: the leaves with no or few training products (a new leaf of a newer tree, a leaf the
data never filled) scored by their names, so the reviewer of a product of such a leaf finds it among the
suggestions instead of searching the tree.

A product's title is compared with each empty leaf's title and the titles above it: char n-gram TF-IDF
(n-grams and IDF from every title of the tree), cosine; measured against natasha's navec vectors and the
multilingual sentence encoder in bench/bench_zero_shot.py. `merge` puts the best empty leaves among a
product's top-N suggestions with probability 0 - the models give them none - behind the model's alternatives
of `zero_shot.keep_probability` or more; the decided leaf, its confidence and its review flag stay the
models' (a zero-shot score can only flag a product for review: `zero_shot.novelty_score`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from prodcat.data.text import normalize
from prodcat.data.tree import CategoryTree
from prodcat.probs import NO_LABEL

CHUNK = 8_192  # products scored at once: (chunk x empty leaves) floats at a time


def empty_leaves(tree: CategoryTree, counts: dict[int, int], few: int) -> np.ndarray:
    """The leaves of `tree` with at most `few` training products (`counts`: {leaf: products}), sorted."""
    return np.array(sorted(leaf for leaf in tree.leaves if counts.get(leaf, 0) <= few), np.int64)


class ZeroShot:
    """Scores products against the title paths of `leaves` (prodcat.settings.ZeroShotSettings: `params`)."""

    def __init__(self, tree: CategoryTree, leaves: np.ndarray, params: dict):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.leaves, self.params = np.asarray(leaves, np.int64), params
        lo, hi = params["char_ngrams"]
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(lo, hi), sublinear_tf=True,
                                          dtype=np.float32)
        titles = [normalize(tree.titles[n]) for n in tree.parent if n != tree.root]
        if not any(titles):  # no title to read a name from: nothing to suggest
            self.leaves, titles = self.leaves[:0], ["-"]
        self.vectorizer.fit(titles)
        own = [normalize(tree.titles[leaf]) for leaf in self.leaves.tolist()]
        above = [" ".join(normalize(tree.titles[n]) for n in tree.path(leaf)[:-1]) for leaf in self.leaves.tolist()]
        both = (self.vectorizer.transform(own) + float(params["path_weight"]) * self.vectorizer.transform(above)
                if own else sp.csr_matrix((0, len(self.vectorizer.vocabulary_)), dtype=np.float32))
        norms = np.sqrt(np.asarray(both.multiply(both).sum(axis=1)).ravel())
        self.matrix = (sp.diags(1 / np.maximum(norms, 1e-9)) @ both).T.tocsc().astype(np.float32)  # (n-grams, leaves)

    def texts(self, frame: pd.DataFrame) -> list[str]:
        """Each product's first `title_words` title words (0: the whole title), normalised."""
        titles = frame["title"] if "title" in frame else pd.Series([""] * len(frame))
        n = int(self.params["title_words"])
        return [" ".join(normalize(t).split()[:n or None]) for t in titles.fillna("").astype(str).tolist()]

    def top(self, frame: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosine scores) of each product's best `k` empty leaves, best first (fewer leaves than `k`:
        NO_LABEL and 0 pad)."""
        texts = self.texts(frame)
        labels = np.full((len(texts), k), NO_LABEL, np.int64)
        scores = np.zeros((len(texts), k), np.float32)
        m = min(k, len(self.leaves))
        for start in range(0, len(texts) if m else 0, CHUNK):
            sim = (self.vectorizer.transform(texts[start:start + CHUNK]) @ self.matrix).toarray()
            idx = (np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < sim.shape[1]
                   else np.tile(np.arange(m), (len(sim), 1)))
            part = np.take_along_axis(sim, idx, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            labels[start:start + len(sim), :m] = self.leaves[np.take_along_axis(idx, order, axis=1)]
            scores[start:start + len(sim), :m] = np.take_along_axis(part, order, axis=1)
        return labels, scores


def merge(labels: np.ndarray, probs: np.ndarray, zs_labels: np.ndarray, zs_scores: np.ndarray,
          params: dict) -> tuple[np.ndarray, np.ndarray]:
    """A product's top-N suggestions (`labels`, `probs`: (products, N), the decided leaf first) with its best
    `slots` zero-shot leaves of score `min_score` or more put behind the decided leaf and the alternatives of
    probability `keep_probability` or more (with probability 0; one the models also suggest keeps theirs),
    the other alternatives after them; the first N kept."""
    n, width = labels.shape
    if not width or not zs_labels.shape[1] or not params["slots"]:
        return labels, probs
    ok = (zs_labels != NO_LABEL) & (zs_scores >= params["min_score"])
    ok &= np.cumsum(ok, axis=1) <= int(params["slots"])
    same = (zs_labels[:, :, None] == labels[:, None, :]) & ok[:, :, None]  # (products, zero-shot, alternatives)
    j = np.arange(width)[None, :]
    as_zero_shot = np.where(same.any(axis=1), width + same.argmax(axis=1), 2 * width + j)
    ahead = (j == 0) | (probs >= params["keep_probability"])
    model_key = np.where(labels == NO_LABEL, np.inf, np.where(ahead, j, as_zero_shot)).astype(np.float64)
    zs_key = np.where(ok & ~same.any(axis=2), width + np.arange(zs_labels.shape[1])[None, :], np.inf)
    keys = np.concatenate([model_key, zs_key], axis=1)
    order = np.argsort(keys, axis=1, kind="stable")[:, :width]
    gone = np.isinf(np.take_along_axis(keys, order, axis=1))
    all_probs = np.concatenate([probs, np.zeros(zs_labels.shape, probs.dtype)], axis=1)
    out_labels = np.where(gone, NO_LABEL, np.take_along_axis(np.concatenate([labels, zs_labels], axis=1), order, 1))
    out_probs = np.where(gone, 0, np.take_along_axis(all_probs, order, axis=1)).astype(probs.dtype)
    return out_labels, out_probs
