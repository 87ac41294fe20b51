"""Catalogue-order base model: the categories of the training products listed just before and after.

A catalogue's ids are handed out in the order products are listed, and products are listed in batches (a
seller's upload, a section of a supplier's price list): on uhtt_ke the training product with the next id is
in the same leaf 77 % of the time. That is a view of a product the text models do not have - it knows how
the catalogue files *this* product line (a catch-all leaf or its specific sibling), not what the words say.

Per product: the `window` nearest training ids on each side vote for their leaf with weight
1/d / (1 + gap/gap_scale) (d = 1 for the nearest on that side, gap = how far its id is), times
(1 + `word_bonus`) when the neighbour's title starts with the same word (the product type of a retail
title: a batch may mix types); ids further than `max_gap` do not vote, and a leaf's probability is its votes
over (all votes + `doubt`): few, far or split neighbours give low probabilities. A product with no
training id within `max_gap` gets no prediction (missing):
tomorrow's products, whose ids lie past every training id, are left to the text models (`stack.hide`
teaches the stacker to do without it). Where consecutive training ids share a leaf hardly more often than
two random products (`min_order`), the ids carry no listing order and the model is skipped (the Flipkart demo).

Saved per fold: the training ids, their leaves, a hash of their titles' first words and the gaps (npz).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
import scipy.sparse as sp

from prodcat.models.base import BaseModel
from prodcat.probs import TopK, from_sparse
from prodcat.settings import register_model, setting


@dataclass
class IdNeighboursSettings:
    window: int = setting(6, "training products on each side of a product (nearest ids) that vote", min=1)
    word_bonus: float = setting(5.0, "a voter whose title starts with the product's first word counts 1 + this",
                                min=0.0)
    max_gap: Union[int, str] = setting("auto", "ids further than this from a product do not vote ('auto': the "
                                       "99th percentile of the gaps between consecutive training ids)", min=1,
                                       choices=("auto",))
    gap_scale: Union[float, str] = setting("auto", "a voter's weight is 1/d / (1 + gap/gap_scale) ('auto': the "
                                           "median gap between consecutive training ids)", min=1e-6,
                                           choices=("auto",))
    doubt: float = setting(0.5, "probability of a leaf: its votes / (all votes + doubt)", min=0.0)
    min_order: float = setting(0.1, "skipped unless consecutive training ids share a leaf at least this much "
                               "more often than two random training products do", min=0.0, max=1.0)


@register_model("id_neighbours", IdNeighboursSettings, hide=1.0)
class IdNeighboursModel(BaseModel):
    uses_ids = True  # the listing order: the training ids next to a product's own

    def __init__(self, params, env):
        super().__init__(params, env)
        self.ids: np.ndarray | None = None  # training ids, sorted
        self.labels: np.ndarray | None = None  # their leaves
        self.words: np.ndarray | None = None  # hashes of their titles' first words
        self.max_gap: float = 0.0
        self.gap_scale: float = 1.0

    def settings(self) -> dict:  # no text: the shared text settings do not change this model
        return {"params": self.params, "top_k": self.env.top_k}

    def skip_reason(self, train) -> str | None:
        same, chance = listing_order(train)
        if same - chance < float(self.params["min_order"]):
            return (f"the ids carry no listing order here: consecutive training ids share a leaf {same:.1%} of "
                    f"the time, two random products {chance:.1%} (models.id_neighbours.min_order: "
                    f"{self.params['min_order']})")
        return None

    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        ids = train["id"].to_numpy(np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids, self.labels = ids[order], train["category_id"].to_numpy(np.int64)[order]
        self.words = first_words(train)[order]
        self.max_gap = gap_setting(self.ids, self.params["max_gap"], 99)
        self.gap_scale = gap_setting(self.ids, self.params["gap_scale"], 50)

    def predict(self, frame) -> TopK:
        query = frame["id"].to_numpy(np.int64)
        k = self.env.top_k
        if len(query) == 0 or len(self.ids) == 0:
            return TopK.empty(query, k)
        votes, classes = self.votes(query, first_words(frame))
        total = np.asarray(votes.sum(axis=1)).ravel()
        missing = total == 0
        votes = sp.diags(1.0 / (total + float(self.params["doubt"]))) @ votes
        return from_sparse(query, votes.tocsr(), classes, k, missing)

    def votes(self, query: np.ndarray, words: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """(n, C) summed neighbour weights per class, and the class ids of its columns."""
        window, bonus = int(self.params["window"]), float(self.params["word_bonus"])
        n, m = len(query), len(self.ids)
        pos = np.searchsorted(self.ids, query, side="left")  # first training id >= the product's
        rows, cols, weights = [], [], []
        for d in range(1, window + 1):
            for at in (pos - d, pos + d - 1):  # d-th on the left, d-th on the right
                ok = (at >= 0) & (at < m)
                at = np.clip(at, 0, m - 1)
                gap = np.abs(self.ids[at] - query)
                ok &= gap <= self.max_gap
                rows.append(np.flatnonzero(ok))
                cols.append(at[ok])
                same = (self.words[at[ok]] == words[ok]) & (words[ok] != 0)
                weight = 1.0 / d / (1.0 + gap[ok] / self.gap_scale) * (1.0 + bonus * same)
                weights.append(weight.astype(np.float32))
        rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
        classes, col = np.unique(self.labels[cols], return_inverse=True)
        if len(classes) == 0:
            classes = np.array([0], np.int64)
        return sp.csr_matrix((weights, (rows, col.ravel())), shape=(n, len(classes))), classes

    def save(self, folder: Path) -> None:
        from prodcat.storage import write_npz

        write_npz({"ids": self.ids, "labels": self.labels, "words": self.words,
                   "max_gap": np.array(self.max_gap), "gap_scale": np.array(self.gap_scale)}, folder / "neighbours.npz")

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "IdNeighboursModel":
        model = cls(params, env)
        with np.load(folder / "neighbours.npz") as z:
            model.ids, model.labels, model.words = z["ids"], z["labels"], z["words"]
            model.max_gap, model.gap_scale = float(z["max_gap"]), float(z["gap_scale"])
        return model


def first_words(frame) -> np.ndarray:
    """A 64-bit hash of each title's first word (lower case, ё -> е); 0 for a title without a word. Vectorised
    pandas string ops, not prodcat.data.text.normalize: that took 18.6 s on uhtt_ke's 283k titles (each fit
    and predict)."""
    titles = frame["title"].fillna("").astype(str)
    word = titles.str.lower().str.replace("ё", "е").str.extract(r"(\w+)", expand=False)
    hashed = pd.util.hash_array(word.fillna("").to_numpy(object))
    return np.where(word.isna().to_numpy(), np.uint64(0), hashed).astype(np.uint64)


def listing_order(train) -> tuple[float, float]:
    """How often consecutive training ids share a leaf, and how often two random training products do."""
    labels = train.sort_values("id")["category_id"].to_numpy()
    if len(labels) < 2:
        return 0.0, 0.0
    share = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(np.mean(labels[1:] == labels[:-1])), float(np.sum(share ** 2))


def gap_setting(sorted_ids: np.ndarray, setting, percentile: float) -> float:
    """A gap setting as a number of ids: the setting itself, or ('auto') that percentile of the gaps between
    consecutive training ids (at least 1)."""
    if setting != "auto":
        return float(setting)
    gaps = np.diff(sorted_ids)
    return float(max(np.percentile(gaps, percentile), 1.0)) if len(gaps) else 1.0
