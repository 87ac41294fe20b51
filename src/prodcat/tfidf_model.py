"""TF-IDF base model: word and character n-grams, a sparse nearest-centroid shortlist and a softmax
linear classifier trained on the shortlist.

Why not scikit-learn's one-vs-rest SGD/LinearSVC: their cost is (non-zeros x classes) per pass and per
class, which at 2,000+ classes and 500k features runs for tens of minutes per fold. Here:

1. features: word 1-2-grams + char_wb 2-5-grams (TfidfVectorizer, sublinear tf), each block L2-normalised,
   weighted and stacked;
2. shortlist: class centroids (sum of the class's rows, L2-normalised; a sparse matrix) give every product
   its `shortlist` most similar classes (cosine) - cheap, with a recall near 1 at 50-100 classes;
3. classifier: a multinomial logistic regression whose softmax runs over each product's shortlist
   (the true class is always added at training time, so the others are hard negatives), trained by
   per-sample SGD with a linearly decaying learning rate, compiled with numba. A pass costs
   (non-zeros x shortlist), not (non-zeros x classes): seconds per epoch on uhtt_ke.
With few classes (<= shortlist) the shortlist is every class, i.e. a plain multinomial logistic regression.

Output probabilities: the softmax over the product's shortlist (classes off the shortlist get 0).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from prodcat.cv import BaseModel
from prodcat.probs import TopK

DEFAULTS = {
    "word_ngrams": [1, 2],
    "word_min_df": 2,
    "word_max_features": 150_000,
    "char_ngrams": [2, 5],
    "char_min_df": 2,
    "char_max_features": 150_000,
    "char_weight": 1.0,        # weight of the char block relative to the word block (both L2-normalised)
    "shortlist": 60,           # candidate classes per product (all classes when there are fewer)
    "epochs": 8,
    "lr": 3.0,                 # initial SGD step (rows are L2-normalised), decays linearly to 0
    "l2": 0.0,                 # weight decay per update on the weights touched (0: none)
    "temperature": 1.0,        # softmax temperature of the output probabilities
    "centroid_prune": 0.0,     # centroid weights below this are dropped before the shortlist product
    "chunk": 4096,             # rows per centroid-similarity chunk (memory: chunk x classes floats)
    "threads": 2,              # threads for the shortlist product
}


class TfidfModel(BaseModel):
    name = "tfidf"

    def settings(self) -> dict:
        return super().settings() | {"params": self.p, "text": self.run.cfg.get("text", {}) |
                                     self.params.get("text", {})}

    @property
    def p(self) -> dict:
        return DEFAULTS | {k: v for k, v in self.params.items() if k != "text"}

    def features(self, ids) -> sp.csr_matrix:
        """TF-IDF rows of these products. The vocabulary and IDF are fitted once per run on every product's
        text (train and test; no labels involved), so all folds share one matrix."""
        if getattr(self, "_x", None) is None:
            texts = self.run.texts(self.params.get("text"))
            start = time.time()
            self._x = Featurizer(self.p).fit_transform(texts.tolist())
            self._pos = pd.Index(texts.index)
            self.vectorize_s = round(time.time() - start, 1)
        return self._x[self._pos.get_indexer(np.asarray(ids))]

    def fit_predict(self, fold, train, predict, workdir: Path):
        x_train = self.features(train["id"].to_numpy())
        classes, y = np.unique(train["category_id"].to_numpy(), return_inverse=True)
        clf = ShortlistSoftmax(self.p, seed=self.run.seed + fold).fit(x_train, y, len(classes))
        out = {}
        for split, frame in predict.items():
            ids = frame["id"].to_numpy()
            if len(ids) == 0:
                out[split] = TopK.empty(ids, self.run.top_k)
                continue
            labels, scores = clf.predict_top(self.features(ids), self.run.top_k)
            out[split] = TopK.from_ranked(ids, classes[labels], scores, self.run.top_k)
        return out


class Featurizer:
    """Word + char TF-IDF, each block L2-normalised, stacked with the char block weighted."""

    def __init__(self, p: dict):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.p = p
        self.word = TfidfVectorizer(ngram_range=tuple(p["word_ngrams"]), min_df=p["word_min_df"],
                                    max_features=p["word_max_features"], sublinear_tf=True, dtype=np.float32,
                                    token_pattern=r"(?u)\b\w+\b")
        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(p["char_ngrams"]),
                                    min_df=p["char_min_df"], max_features=p["char_max_features"],
                                    sublinear_tf=True, dtype=np.float32)

    def _stack(self, w, c) -> sp.csr_matrix:
        from sklearn.preprocessing import normalize

        x = sp.hstack([w, c * np.float32(self.p["char_weight"])], format="csr", dtype=np.float32)
        return normalize(x).astype(np.float32)

    def fit_transform(self, texts: list[str]) -> sp.csr_matrix:
        min_df = self.word.min_df
        if len(texts) < 10 * max(min_df, 1):  # tiny training sets (tests): keep every n-gram
            self.word.min_df = self.char.min_df = 1
        return self._stack(self.word.fit_transform(texts), self.char.fit_transform(texts))

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        return self._stack(self.word.transform(texts), self.char.transform(texts))


class ShortlistSoftmax:
    """Softmax regression over per-product candidate shortlists from sparse class centroids."""

    def __init__(self, p: dict, seed: int = 0):
        self.p = p
        self.seed = seed
        self.timing = {}

    def fit(self, x: sp.csr_matrix, y: np.ndarray, n_classes: int) -> "ShortlistSoftmax":
        from sklearn.preprocessing import normalize

        self.n_classes = n_classes
        onehot = sp.csr_matrix((np.ones(len(y), np.float32), (y, np.arange(len(y)))), shape=(n_classes, len(y)))
        cent = normalize(onehot @ x).astype(np.float32)  # (classes, features)
        prune = float(self.p["centroid_prune"])
        if prune > 0:  # drop a centroid's tiny weights (common n-grams): a much sparser, faster product
            cent.data[cent.data < prune] = 0
            cent.eliminate_zeros()
        self.centroids = cent.T.tocsr()  # (features, classes)
        t0 = time.time()
        cands = self.shortlist(x)
        self.timing["shortlist_s"] = round(time.time() - t0, 1)
        # the true class is always a candidate: it replaces the weakest one when the shortlist missed it
        hit = (cands == y[:, None]).any(axis=1)
        cands[~hit, -1] = y[~hit]
        self.train_recall = float(hit.mean())
        self.w = np.zeros((x.shape[1], n_classes), np.float32)
        self.b = np.zeros(n_classes, np.float32)
        _train(x.indptr, x.indices, x.data, y.astype(np.int32), cands.astype(np.int32), self.w, self.b,
               int(self.p["epochs"]), float(self.p["lr"]), float(self.p["l2"]), self.seed)
        self.timing["train_s"] = round(time.time() - t0 - self.timing["shortlist_s"], 1)
        return self

    def shortlist(self, x: sp.csr_matrix) -> np.ndarray:
        """(n, L) class indices most similar to each row (cosine to the centroids), best first."""
        n_cand = min(int(self.p["shortlist"]), self.n_classes)
        out = np.empty((x.shape[0], n_cand), np.int64)
        if n_cand == self.n_classes:
            out[:] = np.arange(self.n_classes)
            return out
        step = int(self.p["chunk"])

        def chunk(s):
            sim = (x[s:s + step] @ self.centroids).toarray()
            top = np.argpartition(-sim, n_cand - 1, axis=1)[:, :n_cand]
            order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
            out[s:s + step] = np.take_along_axis(top, order, axis=1)

        threads = int(self.p["threads"])
        if threads > 1 and x.shape[0] > step:  # scipy's sparse product releases the GIL
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(chunk, range(0, x.shape[0], step)))
        else:
            for s in range(0, x.shape[0], step):
                chunk(s)
        return out

    def predict_top(self, x: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        cands = self.shortlist(x).astype(np.int32)
        proba = _predict(x.indptr, x.indices, x.data, cands, self.w, self.b, float(self.p["temperature"]))
        k = min(k, cands.shape[1])
        top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(cands, top, axis=1), np.take_along_axis(proba, top, axis=1)


try:  # numba compiles the two loops below; without it they run (slowly) as plain Python
    from numba import njit
except ImportError:  # pragma: no cover
    def njit(*args, **kwargs):
        return (lambda f: f) if not args or not callable(args[0]) else args[0]


@njit(cache=True)
def _train(indptr, indices, data, y, cands, w, b, epochs, lr0, l2, seed):  # pragma: no cover - numba
    n, n_cand = cands.shape
    np.random.seed(seed)
    z = np.empty(n_cand, np.float32)
    total = epochs * n
    step = 0
    for _ in range(epochs):
        order = np.random.permutation(n)
        for i in order:
            lr = lr0 * (1.0 - step / total)
            step += 1
            lo, hi = indptr[i], indptr[i + 1]
            for c in range(n_cand):
                z[c] = b[cands[i, c]]
            for j in range(lo, hi):
                f = indices[j]
                v = data[j]
                for c in range(n_cand):
                    z[c] += v * w[f, cands[i, c]]
            m = z.max()
            s = 0.0
            for c in range(n_cand):
                z[c] = np.exp(z[c] - m)
                s += z[c]
            for c in range(n_cand):
                g = z[c] / s
                if cands[i, c] == y[i]:
                    g -= 1.0
                z[c] = lr * g
                b[cands[i, c]] -= 0.1 * z[c]
            for j in range(lo, hi):
                f = indices[j]
                v = data[j]
                for c in range(n_cand):
                    k = cands[i, c]
                    if l2 > 0.0:
                        w[f, k] -= z[c] * v + lr * l2 * w[f, k]
                    else:
                        w[f, k] -= z[c] * v


@njit(cache=True)
def _predict(indptr, indices, data, cands, w, b, temperature):  # pragma: no cover - numba
    n, n_cand = cands.shape
    out = np.empty((n, n_cand), np.float32)
    for i in range(n):
        for c in range(n_cand):
            out[i, c] = b[cands[i, c]]
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            v = data[j]
            for c in range(n_cand):
                out[i, c] += v * w[f, cands[i, c]]
        m = out[i].max()
        s = 0.0
        for c in range(n_cand):
            out[i, c] = np.exp((out[i, c] - m) / temperature)
            s += out[i, c]
        for c in range(n_cand):
            out[i, c] /= s
    return out
