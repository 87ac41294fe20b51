"""Lookup priors: how often each class goes with a product key (the first title word, the brand, ...),
counted on the other folds' labels. The stacker uses them as candidate features.

A product key is built from a spec, parts joined by `+`:
- `word1`, `word2`, `word3`, ...: that word of the normalised title; `last_word`: its last word;
- `char:NAME`: the values of the characteristic NAME (case-insensitive; `char:Бренд|Brand` takes the first
  name present).
A product lacking a part has no key for that spec (its features are NaN). E.g. `word1+word2` is the first two
title words - in retail titles usually the product type ("конфеты шоколадные") - and `char:Бренд+word1` is
the brand's products of that type.

For a (product, candidate class) pair and a spec the features are `n` (training products with the product's
key), `cnt` (those of them in the candidate class) and `p = cnt / (n + 1)`. Counts exclude one fold: an OOF
product's own fold, or for test products the fold whose base models made the test prediction, so every
product is described by labels its base models also trained on, never by its own label. The train-only
products (`train_only`: labelled, never predicted out of fold) are counted too, in every fold.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from prodcat.data.text import normalize, parse_characteristics
from prodcat.errors import DataError

_WORD = re.compile(r"^word([1-9]\d*)$")


def _part(spec: str, part: str, titles: list[list[str]], chars) -> list[str | None]:
    """Values of one key part for every product (None where it has none); `chars()`: the parsed
    characteristics of every product."""
    m = _WORD.match(part)
    if m:
        i = int(m.group(1)) - 1
        return [words[i] if len(words) > i else None for words in titles]
    if part == "last_word":
        return [words[-1] if words else None for words in titles]
    if part.startswith("char:"):
        names = [n.strip().lower() for n in part[5:].split("|") if n.strip()]

        def value(pairs):
            found = {name.lower(): vals for name, vals in pairs}
            for n in names:
                if found.get(n):
                    return normalize(" | ".join(found[n])) or None
            return None

        return [value(pairs) for pairs in chars()]
    raise DataError(f"stack.priors: unknown key part {part!r} in {spec!r} "
                    "(use word1, word2, ..., last_word or char:NAME, joined by '+')")


def feature_name(i: int, spec: str) -> str:
    """LightGBM-safe feature prefix of the i-th spec, e.g. prior1_word1_word2."""
    ascii_spec = re.sub(r"[^a-z0-9]+", "_", spec.lower()).strip("_")
    return f"prior{i}_{ascii_spec}" if ascii_spec else f"prior{i}"


def product_keys(frame: pd.DataFrame, specs: list[str]) -> list[list[str | None]]:
    """One key per spec for every product of `frame` (None where a part is missing). Plain Python lists:
    a service's single product costs microseconds, not pandas' per-call overhead."""
    titles = [[w for w in normalize(t).split(" ") if w] for t in frame["title"].tolist()]
    parsed = []

    def chars():
        if not parsed:
            parsed.append([parse_characteristics(v) for v in frame["name_value_characteristics"].tolist()])
        return parsed[0]

    cache: dict[str, list[str | None]] = {}
    keys = []
    for spec in specs:
        parts = [p.strip() for p in str(spec).split("+") if p.strip()]
        if not parts:
            raise DataError(f"stack.priors: empty key spec {spec!r}")
        for part in parts:
            if part not in cache:
                cache[part] = [v or None for v in _part(spec, part, titles, chars)]
        keys.append([None if None in values else "\x1f".join(values) for values in zip(*(cache[p] for p in parts))])
    return keys


class LookupPriors:
    """Out-of-fold (key, class) counts for every spec, over the training products and their folds.

    Fitted on the training rows only; `codes(frame)` maps any frame's keys onto the fitted ones (a key no
    training product has gets zero counts, a product without the key NaN features). Saved as plain data:
    the key strings (parquet) and the count tables (npz)."""

    def __init__(self, specs: list[str], k: int, n_classes: int):
        self.specs = list(specs)
        self.names = [feature_name(i, s) for i, s in enumerate(self.specs)]
        self.k, self.n_classes = k, n_classes
        self.vocab: list[dict[str, int]] = []  # per spec: key -> code
        self.pair_keys, self.pair_counts, self.key_counts = [], [], []
        self.pair_extra, self.key_extra = [], []  # per spec: the train-only products' counts (no folds)

    @classmethod
    def fit(cls, specs: list[str], train: pd.DataFrame, y: np.ndarray, folds: np.ndarray, k: int,
            n_classes: int, extra: pd.DataFrame | None = None, extra_y: np.ndarray | None = None
            ) -> "LookupPriors":
        """Counts of the training rows per fold, and of `extra` (train-only products, class indices
        `extra_y`) in every fold."""
        self = cls(specs, k, n_classes)
        extra_keys = product_keys(extra, self.specs) if extra is not None and len(extra) else None
        extra_y = np.zeros(0, np.int64) if extra_keys is None else np.asarray(extra_y, np.int64)
        for i, key in enumerate(product_keys(train, self.specs)):
            both = key if extra_keys is None else key + extra_keys[i]
            code, uniques = pd.factorize(pd.Series(both, dtype=object))  # -1: no key
            code, code_extra = code[:len(key)].astype(np.int64), code[len(key):].astype(np.int64)
            self.vocab.append(dict(zip(uniques.tolist(), range(len(uniques)))))
            ok, ok_extra = (code >= 0) & (y >= 0), (code_extra >= 0) & (extra_y >= 0)
            pk = np.r_[code[ok] * n_classes + y[ok], code_extra[ok_extra] * n_classes + extra_y[ok_extra]]
            uniq, inv = np.unique(pk, return_inverse=True)
            n_train = int(ok.sum())
            self.pair_keys.append(uniq)
            self.pair_counts.append(_fold_counts(inv[:n_train], folds[ok], len(uniq), k))
            self.pair_extra.append(np.bincount(inv[n_train:], minlength=len(uniq)).astype(np.float32))
            self.key_counts.append(_fold_counts(code[ok], folds[ok], len(uniques) + 1, k))  # +1: unseen keys
            self.key_extra.append(np.bincount(code_extra[ok_extra], minlength=len(uniques) + 1).astype(np.float32))
        return self

    def codes(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """Per spec, each product's key code (-1: no key; len(vocab): a key no training product has)."""
        out = []
        for vocab, key in zip(self.vocab, product_keys(frame, self.specs)):
            unseen = len(vocab)
            out.append(np.array([-1 if k is None else vocab.get(k, unseen) for k in key], np.int64))
        return out

    def features(self, codes: list[np.ndarray], products: np.ndarray, cls: np.ndarray,
                 excluded: np.ndarray) -> pd.DataFrame:
        """Features of the pairs (products[i], cls[i]): product rows into `codes`, class indices, and per
        pair the fold whose labels are left out (-1: none; the counts are then scaled by (k-1)/k to match
        fold-excluded ones)."""
        excluded = np.broadcast_to(np.asarray(excluded, np.int64), products.shape)
        none = excluded < 0
        col = np.where(none, self.k, excluded)
        scale = np.where(none, (self.k - 1) / self.k, 1.0).astype(np.float32)
        out = {}
        for name, code, uniq, per_fold, kc, pair_extra, key_extra in zip(
                self.names, codes, self.pair_keys, self.pair_counts, self.key_counts, self.pair_extra,
                self.key_extra):
            c = code[products]
            has = c >= 0
            cs = np.maximum(c, 0)
            n = _left_out(kc, cs, col, none, scale) + key_extra[cs]
            pk = cs * self.n_classes + cls
            cnt = np.zeros(len(pk), np.float32)
            if len(uniq):
                pos = np.clip(np.searchsorted(uniq, pk), 0, len(uniq) - 1)
                cnt = np.where(has & (uniq[pos] == pk), _left_out(per_fold, pos, col, none, scale) + pair_extra[pos],
                               0)
            nan = np.float32(np.nan)
            out[f"{name}_n"] = np.where(has, n, nan).astype(np.float32)
            out[f"{name}_cnt"] = np.where(has, cnt, nan).astype(np.float32)
            out[f"{name}_p"] = np.where(has, cnt / (n + 1), nan).astype(np.float32)
        return pd.DataFrame(out)

    def save(self, folder) -> None:
        from prodcat.storage import write_npz, write_parquet

        arrays = {}
        for i, vocab in enumerate(self.vocab):
            write_parquet(pd.DataFrame({"key": list(vocab)}, dtype=object), folder / f"prior{i}_keys.parquet")
            arrays |= {f"pair_keys{i}": self.pair_keys[i], f"pair_counts{i}": self.pair_counts[i],
                       f"key_counts{i}": self.key_counts[i], f"pair_extra{i}": self.pair_extra[i],
                       f"key_extra{i}": self.key_extra[i]}
        write_npz(arrays, folder / "priors.npz")

    @classmethod
    def load(cls, folder, specs: list[str], k: int, n_classes: int) -> "LookupPriors":
        self = cls(specs, k, n_classes)
        with np.load(folder / "priors.npz") as z:
            for i in range(len(self.specs)):
                keys = pd.read_parquet(folder / f"prior{i}_keys.parquet")["key"].astype(str).tolist()
                self.vocab.append(dict(zip(keys, range(len(keys)))))
                self.pair_keys.append(z[f"pair_keys{i}"])
                self.pair_counts.append(z[f"pair_counts{i}"])
                self.key_counts.append(z[f"key_counts{i}"])
                for name, counts in (("pair_extra", self.pair_extra), ("key_extra", self.key_extra)):
                    size = len(self.pair_keys[i]) if name == "pair_extra" else len(self.key_counts[i])
                    counts.append(z[f"{name}{i}"] if f"{name}{i}" in z.files else np.zeros(size, np.float32))
        return self


def _fold_counts(index: np.ndarray, folds: np.ndarray, size: int, k: int) -> np.ndarray:
    """(size, k+1) counts of each index value per fold; the last column is the total."""
    table = np.zeros((size, k + 1), np.float32)
    np.add.at(table, (index, folds), 1)
    table[:, k] = table[:, :k].sum(axis=1)
    return table


def _left_out(table: np.ndarray, rows: np.ndarray, col: np.ndarray, none: np.ndarray, scale) -> np.ndarray:
    """Total of each row of a `_fold_counts` table minus the left-out fold `col` (none: nothing left out),
    times `scale`."""
    return (table[rows, -1] - np.where(none, 0, table[rows, col])) * scale
