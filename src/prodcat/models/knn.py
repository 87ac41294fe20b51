"""Nearest-training-products base model: the leaves of the most similar training titles.

The linear text models learn one weight per n-gram and class, so a product line whose training products share
an odd leaf (a catch-all, or a specific sibling the words do not explain) is outvoted by the n-grams' other
products. A product's nearest training products know how *that* line was filed: on uhtt_ke a product's
titles without their numbers (sizes, article codes) match a training product's for 16 % of the products,
and then the match's leaf is right 97 % of the time.

Per product: cosine similarity of word 1-2-gram TF-IDF rows (sublinear tf; vocabulary and IDF fitted once
per k-fold run on the training rows' texts, no labels) against every training product of the model; the
`neighbours` most similar vote for their leaves with weight similarity ** `power`, and a leaf's probability
is its share of the votes. The flag `nearest` (the similarity of the most similar training product, 0-1)
tells the stacker how close that neighbour is. A product sharing no term with any training product gets no
prediction (missing). Terms found in more than `max_postings` training products (`для`, `и`) are left out
of the search: they make the similarity search slow and decide little.

Saved per fold: the vocabulary and IDF (shared by the k folds), the training rows (sparse, transposed:
terms x products) and their leaves.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numba import njit

from prodcat.memo import BoundedMemo
from prodcat.models.base import BaseModel
from prodcat.models.tfidf import FittedRows, fit_with_placeholder, read_vocabulary, write_vocabulary
from prodcat.probs import NO_LABEL, TopK
from prodcat.settings import register_model, setting

_VECTORIZERS = BoundedMemo(4)  # content hash of a saved vocabulary -> the loaded vectorizer (shared by folds)
_TRANSFORMED = BoundedMemo(2)  # (vocabulary hash, texts hash) -> their TF-IDF rows


@dataclass(frozen=True)
class Memory:
    """Products people decided since the fit, searched beside the training products: their TF-IDF rows
    (terms x products), the classes of both (the fitted ones and any new leaf), each decided product's class
    and each training product's, as indices into those classes."""

    index: sp.csr_matrix
    classes: np.ndarray
    labels: np.ndarray
    own: np.ndarray


@dataclass
class KnnSettings:
    neighbours: int = setting(20, "most similar training products that vote", min=1)
    power: float = setting(3.0, "a neighbour's vote: its cosine similarity to this power", min=0.0)
    word_ngrams: list[int] = setting([1, 2], "word n-gram range [min, max]", min=1)
    min_df: int = setting(2, "minimal document count of a word n-gram", min=1)
    max_postings: int = setting(2000, "terms found in more training products than this are not searched (they "
                                "make the search slow and decide little)", min=1)
    chunk: int = setting(2000, "products per similarity chunk", min=1)
    threads: int = setting(2, "threads for the similarity chunks", min=1)
    text: dict = setting({}, "text settings for this model only (keys of `text`)")


@register_model("knn", KnnSettings, pipeline=False)
class KnnModel(BaseModel):
    def __init__(self, params, env):
        super().__init__(params, env)
        self.vectorizer = None
        self.index: sp.csr_matrix | None = None  # terms x training products (search terms only)
        self.labels: np.ndarray | None = None  # leaf of each training product
        self.classes, self.label_index = None, None  # the distinct leaves; each training product's, as an index
        self._rows: FittedRows | None = None  # the rows of the texts the vectorizer was fitted on
        self._vocab_key = None  # a loaded model's: the content hash of its vocabulary and IDF
        self.memory: Memory | None = None  # products decided since the fit (`remember`), never saved

    def prepare(self, train) -> None:
        """Vocabulary and IDF from every training row (no labels), shared by the k folds: fitted once."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = self.env.texts(train, self.params.get("text")).tolist()
        self.vectorizer = TfidfVectorizer(ngram_range=tuple(self.params["word_ngrams"]),
                                          min_df=self.params["min_df"],
                                          sublinear_tf=True, dtype=np.float32, token_pattern=r"(?u)\b\w+\b")
        self._rows = FittedRows(texts, fit_with_placeholder([self.vectorizer], texts, lambda x: x))

    def features(self, frame) -> sp.csr_matrix:
        """TF-IDF rows of these products. Rows of the texts the vocabulary was fitted on are looked up; the fold
        models of one k-fold run share their vocabulary, so a loaded model remembers the last other result
        (the fold models predict the same texts one after another)."""
        texts = self.env.texts(frame, self.params.get("text")).tolist()
        found = self._rows.get(texts) if self._rows is not None else None
        if found is not None:
            return found
        if self._vocab_key is None:
            return self.vectorizer.transform(texts).tocsr()
        key = (self._vocab_key, hashlib.sha1("\x1f".join(texts).encode("utf-8", "surrogatepass")).hexdigest())
        return _TRANSFORMED.get_or_make(key, lambda: self.vectorizer.transform(texts).tocsr())

    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        if self.vectorizer is None:
            self.prepare(train)
        x = self.features(train)
        df = np.bincount(x.indices, minlength=x.shape[1])
        common = df > int(self.params["max_postings"])
        x = x.tocsc()
        x.data[np.repeat(common, np.diff(x.indptr))] = 0  # common terms: not searched
        x.eliminate_zeros()
        self.index = x.T.tocsr().astype(np.float32)
        self._set_labels(train["category_id"].to_numpy(np.int64))

    def _set_labels(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.classes, index = np.unique(labels, return_inverse=True)
        self.label_index = index.astype(np.int64)

    def predict(self, frame) -> TopK:
        ids = frame["id"].to_numpy()
        k = self.env.top_k
        if len(ids) == 0:
            return TopK.empty(ids, k)
        x = self.features(frame)
        memory = self.memory  # one reference: a decision stored meanwhile is seen by the next call
        classes = self.classes if memory is None else memory.classes
        m, chunk, n = int(self.params["neighbours"]), int(self.params["chunk"]), x.shape[0]

        def part(start: int):
            q = x[start:start + chunk]
            ix, own = self.index, self.label_index if memory is None else memory.own
            cls, sim = _neighbours(q.indptr, q.indices, q.data, ix.indptr, ix.indices, ix.data, own, m)
            if memory is not None:  # the products people decided since: neighbours like any other
                mx = memory.index
                more = _neighbours(q.indptr, q.indices, q.data, mx.indptr, mx.indices, mx.data, memory.labels, m)
                cls, sim = np.hstack([cls, more[0]]), np.hstack([sim, more[1]])
            return _vote(cls, sim, m, float(self.params["power"]), k)

        starts = range(0, n, chunk)
        with ThreadPoolExecutor(max(1, min(int(self.params["threads"]), len(starts)))) as pool:
            parts = list(pool.map(part, starts))
        lab = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        nearest = np.concatenate([p[2] for p in parts])
        labels = np.where(lab >= 0, classes[np.maximum(lab, 0)], NO_LABEL)
        return TopK.from_ranked(ids, labels, scores, k, nearest <= 0, {"nearest": nearest})

    def remember(self, products, leaves: np.ndarray) -> None:
        """Products people decided since the model was fitted (`leaves`: their chosen leaves) join its memory of
        labelled products at once: they are searched beside the training products, and vote as any
        neighbour does. Replaces the previous memory (an undone decision is gone with it); none: forgotten."""
        if products is None or not len(products):
            self.memory = None
            return
        x = self.features(products).tocsc()
        classes = np.union1d(self.classes, np.asarray(leaves, np.int64))  # a new leaf is learned from its first
        self.memory = Memory(index=x.T.tocsr().astype(np.float32), classes=classes,
                             labels=np.searchsorted(classes, np.asarray(leaves, np.int64)).astype(np.int64),
                             own=np.searchsorted(classes, self.classes)[self.label_index].astype(np.int64))

    def save(self, folder: Path) -> None:
        from prodcat.storage import write_npz

        write_vocabulary(self.vectorizer, folder / "vocab.parquet")
        write_npz({"idf": self.vectorizer.idf_, "indptr": self.index.indptr, "indices": self.index.indices,
                   "data": self.index.data, "shape": np.array(self.index.shape), "labels": self.labels},
                  folder / "index.npz")

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "KnnModel":
        from sklearn.feature_extraction.text import TfidfVectorizer

        model = cls(params, env)
        vec = TfidfVectorizer(ngram_range=tuple(model.params["word_ngrams"]), sublinear_tf=True,
                              dtype=np.float32, token_pattern=r"(?u)\b\w+\b")
        with np.load(folder / "index.npz") as z:
            idf = z["idf"]
            model.index = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            model._set_labels(z["labels"])
        model._vocab_key = hashlib.sha1((folder / "vocab.parquet").read_bytes() + idf.tobytes()
                                        + repr(model.params["word_ngrams"]).encode()).hexdigest()

        def read():
            vec.vocabulary_ = read_vocabulary(folder / "vocab.parquet")
            vec.idf_ = idf
            return vec

        model.vectorizer = _VECTORIZERS.get_or_make(model._vocab_key, read)  # one per run's vocabulary
        return model


@njit(cache=True, nogil=True)
def _neighbours(q_indptr, q_indices, q_data, ix_indptr, ix_indices, ix_data, y, m):  # pragma: no cover
    """Per query row (TF-IDF, CSR) its cosine similarity to every indexed product sharing a term with it (the
    index: terms x products, CSR), accumulated term by term. Returns the `m` most similar: their class
    (index into the classes, -1: none) and similarity, most similar first."""
    n = len(q_indptr) - 1
    n_train = len(y)
    cls = np.full((n, m), -1, np.int64)
    sim = np.zeros((n, m), np.float32)
    acc = np.zeros(n_train, np.float32)
    touched = np.empty(n_train, np.int64)
    for i in range(n):
        hits = 0
        for p in range(q_indptr[i], q_indptr[i + 1]):
            t, w = q_indices[p], q_data[p]
            for r in range(ix_indptr[t], ix_indptr[t + 1]):
                d = ix_indices[r]
                if acc[d] == 0:
                    touched[hits] = d
                    hits += 1
                acc[d] += w * ix_data[r]
        if hits == 0:
            continue
        found = touched[:hits]
        sims = acc[found].copy()
        acc[found] = 0
        top = min(m, hits)
        if hits > top:  # the m most similar: a linear-time cut, then a sort of those only
            cut = np.partition(sims, hits - top)[hits - top]
            best = np.flatnonzero(sims >= cut)
            order = best[np.argsort(-sims[best], kind="mergesort")][:top]
        else:
            order = np.argsort(-sims, kind="mergesort")
        for j in range(top):
            cls[i, j] = y[found[order[j]]]
            sim[i, j] = sims[order[j]]
    return cls, sim


@njit(cache=True, nogil=True)
def _vote(nb_cls, nb_sim, neighbours, power, k):  # pragma: no cover
    """The `neighbours` most similar of each row's candidates (class -1: none) vote for their class with
    similarity ** power. Returns the k best classes and their vote shares, and the top similarity."""
    n, width = nb_cls.shape
    labels = np.full((n, k), -1, np.int64)
    scores = np.zeros((n, k), np.float32)
    nearest = np.zeros(n, np.float32)
    for i in range(n):
        order = np.argsort(-nb_sim[i], kind="mergesort")
        cls = np.empty(neighbours, np.int64)
        votes = np.zeros(neighbours, np.float64)
        used, taken = 0, 0
        for j in order:
            if taken == neighbours:
                break
            c = nb_cls[i, j]
            if c < 0:
                continue
            if taken == 0:
                nearest[i] = nb_sim[i, j]
            taken += 1
            w = max(nb_sim[i, j], 0.0) ** power
            for u in range(used):
                if cls[u] == c:
                    votes[u] += w
                    break
            else:
                cls[used] = c
                votes[used] = w
                used += 1
        total = votes[:used].sum()
        if total <= 0:
            continue
        best = np.argsort(-votes[:used])[:k]
        for j in range(len(best)):
            labels[i, j] = cls[best[j]]
            scores[i, j] = votes[best[j]] / total
    return labels, scores, nearest
