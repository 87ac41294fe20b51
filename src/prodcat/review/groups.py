"""Similar products decided together: the cosine of char 3-gram count vectors of the normalised titles
(prodcat.data.text.normalize; hashed, so a vector never depends on the other products of a batch), groups of
one lead and its near-duplicates (`form_groups`), and the threshold that keeps a group's products in one leaf
(`pick_group_similarity`, measured by bench/bench_groups.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

MAX_MEMBERS = 9  # members of one lead: the page excludes one with x then its number (1-9)
FLOOR = 0.3  # pairs below this similarity are never kept (the lowest threshold the curve shows)
CHUNK = 1000  # rows per sparse product


def title_vectors(titles) -> "scipy.sparse.csr_matrix":  # noqa: F821 - scipy is imported lazily
    """Each title's char 3-grams (within words, padded by spaces) of its normalised text, counted, hashed into
    2^20 columns, L2-normalised; an empty title is a zero row (similar to nothing)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    from prodcat.data.text import normalize

    hashing = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=2 ** 20, alternate_sign=False,
                                norm="l2", lowercase=False, dtype=np.float32)
    return hashing.transform([normalize(t) for t in titles]).tocsr()


def similar_pairs(a, b=None, floor: float = FLOOR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of the pairs with a cosine of at least `floor`: rows i of `a` and j of `b`, or i < j of
    `a` alone (b None)."""
    same = b is None
    b = a if same else b
    rows, cols, sims = [], [], []
    bt = b.T.tocsc()
    for start in range(0, a.shape[0], CHUNK):
        block = (a[start:start + CHUNK] @ bt).tocoo()
        keep = block.data >= floor - 1e-6
        i, j = block.row[keep] + start, block.col[keep]
        if same:
            i, j, s = i[i < j], j[i < j], block.data[keep][i < j]
        else:
            s = block.data[keep]
        rows.append(i)
        cols.append(j)
        sims.append(np.minimum(s, 1.0))

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return cat(rows, np.int64), cat(cols, np.int64), cat(sims, np.float32)


def form_groups(vectors, threshold: float | None, order=None, max_members: int = MAX_MEMBERS) -> np.ndarray:
    """The lead of each row (its own index: a lead or alone). Rows are taken in `order` (the queue's serving
    order; None: as they are): a row not yet in a group leads one, and the rows not yet in a group whose cosine
    with it is at least `threshold` join it, most similar first, at most `max_members`. Every member is then
    similar to its lead (the pairs `pick_group_similarity` measured). `threshold` None: no groups."""
    n = vectors.shape[0]
    if threshold is None or n < 2:
        return np.arange(n)
    return leads(n, *similar_pairs(vectors, floor=threshold), threshold, order, max_members)


def leads(n: int, i, j, s, threshold: float, order=None, max_members: int = MAX_MEMBERS) -> np.ndarray:
    """`form_groups` from the pairs (i < j, cosine) of `similar_pairs`."""
    lead = np.arange(n)
    keep = s >= threshold - 1e-6
    i, j, s = np.concatenate([i[keep], j[keep]]), np.concatenate([j[keep], i[keep]]), np.concatenate([s[keep]] * 2)
    by = np.lexsort((-s, i))  # each row's neighbours, most similar first
    i, j = i[by], j[by]
    starts = np.searchsorted(i, np.arange(n + 1))
    taken = np.zeros(n, bool)
    for r in (range(n) if order is None else order):
        if taken[r]:
            continue
        taken[r] = True
        joined = 0
        for m in j[starts[r]:starts[r + 1]]:
            if joined >= max_members:
                break
            if not taken[m]:
                taken[m], lead[m] = True, r
                joined += 1
    return lead


def similarity_curve(texts, labels, grid=None) -> pd.DataFrame:
    """Per threshold of `grid` (default 0.30, 0.31, ..., 1.00): the pairs of products with a title cosine at
    least that high (`pairs`), the share of them in one leaf (`pair_precision`), the share of the products
    that `form_groups` puts in a group of two or more (`grouped`, the products taken in a seeded random order)
    and the share of those groups' members in their lead's leaf (`member_precision`)."""
    grid = np.round(np.arange(FLOOR, 1.0001, 0.01), 2) if grid is None else np.asarray(grid, float)
    labels = np.asarray(labels)
    vectors = title_vectors(texts)
    i, j, s = similar_pairs(vectors, floor=float(grid.min()))
    by = np.argsort(-s, kind="stable")
    i, j, s = i[by], j[by], s[by]
    same = labels[i] == labels[j]
    order = np.random.default_rng(0).permutation(len(labels))
    rows = []
    for t in grid:
        k = int(np.searchsorted(-s, -t + 1e-6, side="right"))  # the pairs with s >= t
        lead = leads(len(labels), i[:k], j[:k], s[:k], float(t), order)
        grouped = np.bincount(lead, minlength=len(lead))[lead] > 1
        members = lead != np.arange(len(lead))
        rows.append({"threshold": float(t), "pairs": k, "pair_precision": float(same[:k].mean()) if k else None,
                     "grouped": float(grouped.mean()),
                     "member_precision": float((labels[members] == labels[lead[members]]).mean())
                     if members.any() else None})
    return pd.DataFrame(rows)


def pick_group_similarity(texts, labels, precision: float = 0.98, grid=None) -> tuple[float | None, pd.DataFrame]:
    """(the lowest threshold of the grid whose pairs - every pair of products with a title cosine at least that
    high - share a leaf at least `precision` of the time, and so do the members of the groups `form_groups`
    makes with it and their leads; the curve of `similarity_curve`). None when no threshold reaches it.
    `texts`: the products' titles; `labels`: their leaves."""
    curve = similarity_curve(texts, labels, grid)
    ok = np.flatnonzero((curve["pair_precision"].fillna(0.0).to_numpy() >= precision)
                        & (curve["member_precision"].fillna(0.0).to_numpy() >= precision))
    return (float(curve["threshold"].iat[ok[0]]) if len(ok) else None), curve
