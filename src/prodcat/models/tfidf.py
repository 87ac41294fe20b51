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
Saved per fold: the vocabularies and IDF (fitted once per k-fold run on the training rows, no labels),
the sparse weights, the biases and the class centroids.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit

from prodcat.memo import BoundedMemo
from prodcat.models.base import BaseModel
from prodcat.probs import TopK
from prodcat.settings import defaults_of, register_model, setting


@dataclass
class TfidfSettings:
    word_ngrams: list[int] = setting([1, 2], "word n-gram range [min, max]", min=1)
    word_min_df: int = setting(2, "minimal document count of a word n-gram", min=1)
    word_max_features: int = setting(150_000, "most frequent word n-grams kept", min=1)
    char_ngrams: list[int] = setting([2, 5], "char_wb n-gram range [min, max]", min=1)
    char_min_df: int = setting(2, "minimal document count of a char n-gram", min=1)
    char_max_features: int = setting(150_000, "most frequent char n-grams kept", min=1)
    char_weight: float = setting(1.0, "weight of the char block relative to the word block", min=0.0)
    shortlist: int = setting(60, "candidate classes per product (every class when there are fewer)", min=1)
    epochs: int = setting(8, "SGD passes", min=1)
    lr: float = setting(3.0, "initial SGD step, decays linearly to 0", min=0.0)
    l2: float = setting(0.0, "weight decay per update (0: none)", min=0.0)
    temperature: float = setting(1.0, "softmax temperature of the output probabilities", min=1e-6)
    centroid_prune: float = setting(0.0, "centroid weights below this are dropped", min=0.0)
    prune: float = setting(0.0, "weights below this magnitude are dropped after training (0: keep all)", min=0.0)
    chunk: int = setting(4096, "rows per chunk of the shortlist and of prediction", min=1)
    threads: int = setting(2, "threads for the shortlist and prediction chunks", min=1)
    text: dict = setting({}, "text settings for this model only (keys of `text`)")


DEFAULTS = defaults_of(TfidfSettings)


@register_model("tfidf", TfidfSettings)
class TfidfModel(BaseModel):
    def __init__(self, params, env):
        super().__init__(params, env)
        self.featurizer: Featurizer | None = None
        self.clf: ShortlistSoftmax | None = None
        self.classes: np.ndarray | None = None

    def settings(self) -> dict:
        return super().settings() | {"params": self.p}

    @property
    def p(self) -> dict:
        return {k: v for k, v in self.params.items() if k != "text"}

    def prepare(self, train) -> None:
        """Vocabulary and IDF from every training row (no labels), shared by the k folds: fitted once."""
        self.featurizer = Featurizer(self.p)
        self.featurizer.fit_transform(self.env.texts(train, self.params.get("text")).tolist())

    def features(self, frame) -> sp.csr_matrix:
        """TF-IDF rows of these products."""
        return self.featurizer.transform(self.env.texts(frame, self.params.get("text")).tolist())

    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        if self.featurizer is None:  # not prepared: the vocabulary of these rows
            self.prepare(train)
        self.classes, y = np.unique(train["category_id"].to_numpy(), return_inverse=True)
        self.clf = ShortlistSoftmax(self.p, seed=self.child_seed(fold)).fit(self.features(train), y,
                                                                            len(self.classes))

    def predict(self, frame) -> TopK:
        ids = frame["id"].to_numpy()
        if len(ids) == 0:
            return TopK.empty(ids, self.env.top_k)
        labels, scores = self.clf.predict_top(self.features(frame), self.env.top_k)
        return TopK.from_ranked(ids, self.classes[labels], scores, self.env.top_k)

    def save(self, folder: Path) -> None:
        self.featurizer.save(folder)
        self.clf.save(folder / "classifier.npz", self.classes)

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "TfidfModel":
        model = cls(params, env)
        model.featurizer = Featurizer.load(folder, model.p)
        model.clf, model.classes = ShortlistSoftmax.load(folder / "classifier.npz", model.p)
        return model


_LOADED = BoundedMemo(4)  # content hash of a saved featurizer -> the loaded one (shared by the fold models)


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
        """Fit the vocabularies and IDF on these texts; their rows are remembered (`transform` of the k
        folds' training and held-out rows then only looks them up)."""
        if len(texts) < 10 * max(self.word.min_df, 1):  # tiny training sets (tests): keep every n-gram
            self.word.min_df = self.char.min_df = 1
        x = fit_with_placeholder([self.word, self.char], texts, self._stack,
                                 "TF-IDF: the training products have no text to learn from; it predicts from "
                                 "the classes' frequencies only")
        self._fitted = FittedRows(texts, x)
        return x

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF rows of these texts. The k fold models of a run share one featurizer: rows of the texts it
        was fitted on are looked up, and the last other result is kept (the fold models predict the same
        texts one after another)."""
        import hashlib

        if hasattr(self, "_fitted"):
            found = self._fitted.get(texts)
            if found is not None:
                return found
        key = hashlib.sha1("\x1f".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
        last = getattr(self, "_last", None)  # read once: another thread (a service's request) may replace it
        if last is None or last[0] != key:
            last = (key, self._stack(self.word.transform(texts), char_wb_tfidf(self.char, texts)))
            self._last = last
        return last[1]

    def save(self, folder: Path) -> None:
        """Vocabularies (parquet: term, column) and IDF weights (npz)."""
        from prodcat.storage import write_npz

        for name, vec in (("word", self.word), ("char", self.char)):
            write_vocabulary(vec, folder / f"vocab_{name}.parquet")
        write_npz({"idf_word": self.word.idf_, "idf_char": self.char.idf_}, folder / "idf.npz")

    @classmethod
    def load(cls, folder: Path, p: dict) -> "Featurizer":
        """A saved featurizer; fold models saved from one k-fold run share one (loaded once per process)."""
        import hashlib

        names = ("idf.npz", "vocab_word.parquet", "vocab_char.parquet")
        saved = b"".join((folder / name).read_bytes() for name in names)
        key = hashlib.sha1(saved + repr(sorted(p.items())).encode()).hexdigest()
        return _LOADED.get_or_make(key, lambda: cls._read(folder, p))

    @classmethod
    def _read(cls, folder: Path, p: dict) -> "Featurizer":
        f = cls(p)
        with np.load(folder / "idf.npz") as z:
            idf = {"word": z["idf_word"], "char": z["idf_char"]}
        for name, vec in (("word", f.word), ("char", f.char)):
            vec.vocabulary_ = read_vocabulary(folder / f"vocab_{name}.parquet")
            vec.fixed_vocabulary_ = False
            vec.idf_ = idf[name]
        return f


def write_vocabulary(vectorizer, path: Path) -> None:
    """A fitted vectorizer's vocabulary as parquet (term, column)."""
    from prodcat.storage import write_parquet

    vocab = pd.Series(vectorizer.vocabulary_).sort_values()
    write_parquet(pd.DataFrame({"term": vocab.index.astype(str), "column": vocab.to_numpy()}), path)


def read_vocabulary(path: Path) -> dict[str, int]:
    """What `write_vocabulary` wrote: {term: column}."""
    vocab = pd.read_parquet(path)
    return dict(zip(vocab["term"].tolist(), vocab["column"].astype(int).tolist()))


class FittedRows:
    """The TF-IDF rows of the texts a vocabulary was fitted on, found again by text: the k fold models of a run
    share the vocabulary, and their training and held-out rows are never vectorised again."""

    def __init__(self, texts: list[str], x: sp.csr_matrix):
        self.where = pd.Series(np.arange(len(texts)), index=texts).groupby(level=0).first().to_dict()
        self.x = x.tocsr()

    def get(self, texts: list[str]) -> sp.csr_matrix | None:
        """The rows of these texts, or None when one of them was not among the fitted ones."""
        rows = np.array([self.where.get(t, -1) for t in texts], np.int64)
        return self.x[rows] if (rows >= 0).all() else None


def fit_with_placeholder(vectorizers: list, texts: list[str], combine, warning: str | None = None):
    """`combine` of each vectorizer's fit_transform of the texts. Texts with no term at all (an empty
    vocabulary) are fitted with one placeholder term instead, so that the model can be fitted and served
    (`warning`, when given, says so); their rows are then empty."""
    try:
        return combine(*(v.fit_transform(texts) for v in vectorizers))
    except ValueError as exc:
        if "empty vocabulary" not in str(exc):
            raise
    if warning:
        import warnings

        warnings.warn(warning)
    for v in vectorizers:
        v.min_df = 1
    placeholder = ["emptytext"] + list(texts)
    return combine(*(v.fit_transform(placeholder) for v in vectorizers))[1:]


def char_wb_tfidf(vectorizer, texts: list[str]) -> sp.csr_matrix:
    """`vectorizer.transform(texts)` of a fitted char_wb TfidfVectorizer, the same matrix several times
    faster: char_wb n-grams never cross a word, so each distinct word is analysed and looked up once (not
    once per product that has it) and a text's counts are its words' n-gram columns added up."""
    analyze, vocab, n_features = vectorizer.build_analyzer(), vectorizer.vocabulary_, len(vectorizer.idf_)
    word_cols: dict[str, list[int]] = {}  # this call's words only: bounded by its texts, nothing shared
    cols, lengths = [], []
    for text in texts:
        before = len(cols)
        for word in text.split():
            found = word_cols.get(word)
            if found is None:
                found = word_cols[word] = [j for g in analyze(word) if (j := vocab.get(g)) is not None]
            cols.extend(found)
        lengths.append(len(cols) - before)
    x = sp.csr_matrix((np.ones(len(cols), vectorizer.dtype), np.asarray(cols, np.int32),
                       np.r_[0, np.cumsum(lengths)].astype(np.int64)), shape=(len(texts), n_features))
    x.sum_duplicates()  # one entry per (text, n-gram): its count; columns sorted
    if vectorizer.sublinear_tf:  # as TfidfTransformer.transform does it
        np.log(x.data, x.data)
        x.data += 1
    x.data *= vectorizer.idf_[x.indices]
    from sklearn.preprocessing import normalize

    return normalize(x, norm=vectorizer.norm, copy=False)


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
        self.sparsify()
        return self

    def shortlist(self, x: sp.csr_matrix) -> np.ndarray:
        """(n, L) class indices most similar to each row (cosine to the centroids), best first."""
        n_cand = min(int(self.p["shortlist"]), self.n_classes)
        out = np.empty((x.shape[0], n_cand), np.int64)
        if n_cand == self.n_classes:
            out[:] = np.arange(self.n_classes)
            return out

        c = self.centroids

        def chunk(rows: slice):
            xs = x[rows]
            out[rows] = _shortlist_sparse(xs.indptr, xs.indices, xs.data, c.indptr, c.indices, c.data,
                                          self.n_classes, n_cand)

        self.in_chunks(x.shape[0], chunk)
        return out

    def in_chunks(self, n: int, work) -> None:
        """work(rows) for every `chunk` rows of n, on `threads` threads (the sparse products and the compiled
        loops release the GIL)."""
        step = int(self.p["chunk"])
        chunks = [slice(s, s + step) for s in range(0, n, step)]
        threads = int(self.p["threads"])
        if threads > 1 and len(chunks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, chunks))
        else:
            for rows in chunks:
                work(rows)

    def sparsify(self) -> None:
        """Keep the weights as a sparse (features x classes) matrix: only shortlist classes are ever
        updated, so most entries are zeros (dense float32 would be ~2.4 GB per fold on uhtt_ke). Weights
        below `prune` in magnitude are dropped, and the rest rounded to float16 precision (how they are
        saved: the fitted model and the loaded one predict identically)."""
        indptr, indices, data = _prune_dense(self.w, np.float32(self.p["prune"]))
        data = data.astype(np.float16).astype(np.float32)
        self.weights = sp.csr_matrix((data, indices, indptr), shape=self.w.shape)
        del self.w

    def predict_top(self, x: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best k shortlist classes (indices) and their softmax probabilities per row."""
        if hasattr(self, "w"):
            self.sparsify()
        cands = self.shortlist(x).astype(np.int32)
        w, b = self.weights, self.b.astype(np.float32)
        k = min(k, cands.shape[1])
        labels, probs = np.empty((x.shape[0], k), np.int32), np.empty((x.shape[0], k), np.float32)

        def chunk(rows: slice):
            xs = x[rows]
            proba = _predict_sparse(xs.indptr, xs.indices, xs.data, cands[rows], w.indptr, w.indices, w.data, b,
                                    np.float32(self.p["temperature"]), w.shape[1])
            top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            labels[rows] = np.take_along_axis(cands[rows], top, axis=1)
            probs[rows] = np.take_along_axis(proba, top, axis=1)

        self.in_chunks(x.shape[0], chunk)
        return labels, probs

    def save(self, path: Path, classes: np.ndarray) -> None:
        """Sparse weights, bias and class centroids (npz), with the category id of each class index."""
        from prodcat.storage import write_npz

        if hasattr(self, "w"):
            self.sparsify()
        arrays = {"classes": classes, "b": self.b}
        for name, m in (("w", self.weights), ("centroids", self.centroids)):
            arrays |= {f"{name}_data": m.data.astype(np.float16 if name == "w" else np.float32),
                       f"{name}_indices": m.indices, f"{name}_indptr": m.indptr, f"{name}_shape": np.array(m.shape)}
        write_npz(arrays, path)

    @classmethod
    def load(cls, path: Path, p: dict) -> tuple["ShortlistSoftmax", np.ndarray]:
        clf = cls(p)
        with np.load(path) as z:
            def csr(name):
                return sp.csr_matrix((z[f"{name}_data"].astype(np.float32), z[f"{name}_indices"],
                                      z[f"{name}_indptr"]), shape=tuple(z[f"{name}_shape"]))

            clf.weights, clf.centroids, clf.b, classes = csr("w"), csr("centroids"), z["b"], z["classes"]
        clf.n_classes = len(classes)
        return clf, classes


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


@njit(cache=True, nogil=True)
def _shortlist_sparse(indptr, indices, data, c_indptr, c_indices, c_data, n_classes,
                      n_cand):  # pragma: no cover - numba
    """Per row of x: the n_cand classes of largest x @ C (C a sparse features x classes CSR matrix), best
    first. One dense row of similarities at a time: no sparse product is built."""
    n = len(indptr) - 1
    out = np.empty((n, n_cand), np.int64)
    sim = np.zeros(n_classes, np.float32)
    for i in range(n):
        for j in range(indptr[i], indptr[i + 1]):
            v = data[j]
            f = indices[j]
            for q in range(c_indptr[f], c_indptr[f + 1]):
                sim[c_indices[q]] += v * c_data[q]
        top = np.argpartition(-sim, n_cand - 1)[:n_cand]
        order = np.argsort(-sim[top], kind="mergesort")
        out[i] = top[order]
        sim[:] = 0
    return out


@njit(cache=True, nogil=True)
def _predict_sparse(indptr, indices, data, cands, w_indptr, w_indices, w_data, b, temperature,
                    n_classes):  # pragma: no cover - numba
    """Softmax over each row's shortlist of x @ W + b, with W a sparse (features x classes) CSR matrix:
    only the row's features' weight rows are read, and only their shortlist classes are added up."""
    n, n_cand = cands.shape
    out = np.empty((n, n_cand), np.float32)
    slot = np.full(n_classes, -1, np.int64)
    for i in range(n):
        for c in range(n_cand):
            slot[cands[i, c]] = c
            out[i, c] = b[cands[i, c]]
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            v = data[j]
            for q in range(w_indptr[f], w_indptr[f + 1]):
                c = slot[w_indices[q]]
                if c >= 0:
                    out[i, c] += v * w_data[q]
        m = out[i].max()
        s = 0.0
        for c in range(n_cand):
            out[i, c] = np.exp((out[i, c] - m) / temperature)
            s += out[i, c]
        for c in range(n_cand):
            out[i, c] /= s
            slot[cands[i, c]] = -1
    return out


@njit(cache=True)
def _prune_dense(w, prune):  # pragma: no cover - numba
    """CSR arrays of the entries of a dense matrix with |w| >= prune (and != 0), without dense temporaries."""
    n, m = w.shape
    indptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        c = 0
        for j in range(m):
            v = w[i, j]
            if v != 0 and abs(v) >= prune:
                c += 1
        indptr[i + 1] = indptr[i] + c
    indices = np.empty(indptr[n], np.int32)
    data = np.empty(indptr[n], np.float32)
    for i in range(n):
        q = indptr[i]
        for j in range(m):
            v = w[i, j]
            if v != 0 and abs(v) >= prune:
                indices[q] = j
                data[q] = v
                q += 1
    return indptr, indices, data
