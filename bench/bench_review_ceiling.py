"""How much items 1 and 2 of the reviewer's hour (a decision teaching at once, similar products decided
together) could save at best on a day of tomorrow's products - an upper bound from the day itself, with no
rule of the desk in the way. Measures and prints.

    ./run.sh python bench/bench_review_ceiling.py MODELS_DIR DATA_DIR [--n 70864] [--seed 0]

The day and the cost model are bench/bench_reviewer.py's (the same seeded sample of unseen labelled products,
predicted with top 9 at min precision 0.98; the shown products: the flagged ones and a 2 % audit sample of
the others). Per title-cosine threshold (the char 3-gram vectors of prodcat.review.groups):

- groups, at best: the whole day is one batch, groups have no size limit and no purity rule, and every member
  whose true leaf differs from its lead's is excluded (1 s) and decided alone; a member with its lead's leaf
  costs 1 s instead of its own cost;
- teaching, at best: a shown product costs nothing (as if teaching had auto-accepted it) when an earlier
  product of the day (in the day's order; any product, as if every one of them had been decided) has its true
  leaf and is closer to it than every labelled product the kNN already indexes (the kNN's own vectors and its
  `nearest` similarity, a fold child) and at least the threshold (the title cosine) - a decision can only
  teach what the memory did not know.

The share of the one-at-a-time person-seconds each could save is printed; the sum of their best bounds both
together.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reviewer import MEMBER_S, SEARCH_S, SUGGESTION1_S, SUGGESTION_S, day_orders, unseen_products  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.91)


def costs(truth: np.ndarray, suggestions: np.ndarray) -> np.ndarray:
    """Seconds to decide each product with its true leaf (bench_reviewer's cost model, vectorised)."""
    later = (suggestions[:, 1:] == truth[:, None]).any(axis=1)
    return np.where(suggestions[:, 0] == truth, SUGGESTION1_S, np.where(later, SUGGESTION_S, SEARCH_S))


def group_saving(vectors, truth: np.ndarray, cost: np.ndarray, threshold: float, seed: int
                 ) -> tuple[float, int, float]:
    """(seconds saved, members, the members' share in their lead's leaf) by groups at `threshold` with oracle
    exclusions, no size limit."""
    from prodcat.review.groups import leads, similar_pairs

    n = len(truth)
    lead = leads(n, *similar_pairs(vectors, floor=threshold), threshold,
                 np.random.default_rng(seed).permutation(n), max_members=n)
    members = np.flatnonzero(lead != np.arange(n))
    same = truth[members] == truth[lead[members]]
    saved = float((cost[members][same] - MEMBER_S).sum() - (~same).sum() * MEMBER_S)
    return saved, len(members), float(same.mean()) if len(members) else float("nan")


def teach_saving(vectors, knn_vectors, nearest: np.ndarray, truth: np.ndarray, shown: np.ndarray, cost: np.ndarray,
                 position: np.ndarray, threshold: float) -> tuple[float, int]:
    """(seconds saved, products) when every shown product with an earlier same-leaf near-duplicate closer than
    the kNN's nearest labelled product is free."""
    from prodcat.review.groups import similar_pairs

    i, j, _ = similar_pairs(vectors[shown], vectors, floor=threshold)  # i: shown row, j: any product of the day
    knn_sim = np.asarray(knn_vectors[shown[i]].multiply(knn_vectors[j]).sum(axis=1)).ravel()
    keep = ((truth[shown][i] == truth[j]) & (position[j] < position[shown][i])
            & (knn_sim > nearest[shown][i] + 1e-6))
    taught = np.unique(i[keep])
    return float(cost[taught].sum()), len(taught)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--n", type=int, default=10_000, help="products in a day (a seeded sample of the unseen ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-precision", type=float, default=0.98)
    ap.add_argument("--audit-share", type=float, default=0.02)
    ap.add_argument("--use", default="folds")
    args = ap.parse_args()

    from prodcat.predict import Predictor
    from prodcat.review.groups import title_vectors

    predictor = Predictor.load(args.models, use=args.use)
    day = unseen_products(args.models, args.data, args.n, args.seed)
    started = time.perf_counter()
    table = predictor.predict(day.drop(columns=["category_id", "original_id"]), top=min(9, predictor.top_k),
                              min_precision=args.min_precision)
    print(f"[bench_review_ceiling] predicted {len(day)} products in {time.perf_counter() - started:.0f}s", flush=True)
    truth = day["category_id"].to_numpy(np.int64)
    flagged = table["needs_review"].to_numpy(bool)
    audit = ~flagged & (np.random.default_rng(args.seed).random(len(day)) < args.audit_share)
    shown = np.flatnonzero(flagged | audit)
    suggestions = table[[c for c in table.columns if c.startswith("top") and c.endswith("_category_id")]].to_numpy()
    cost = costs(truth[shown], suggestions[shown])
    total = float(cost.sum())
    print(f"[bench_review_ceiling] {len(day)} products: {len(shown) / len(day) * 1000:.1f} shown per 1,000 "
          f"({flagged.mean():.2%} flagged), one at a time {total / len(day) * 1000:.1f} person-s per 1,000; "
          f"suggestion 1 right for {(cost == SUGGESTION1_S).mean():.1%} of them, a tree search for "
          f"{(cost == SEARCH_S).mean():.1%}", flush=True)
    vectors = title_vectors(day["title"].to_numpy())
    knn = predictor.base("knn")[0]  # the kNN's memory: what a decision would be added to
    frame = day.drop(columns=["category_id", "original_id"])
    knn_vectors = knn.features(frame).tocsr()
    nearest = np.asarray(knn.predict(frame).flags["nearest"], np.float64)
    print(f"[bench_review_ceiling] the kNN's nearest labelled product: median similarity {np.median(nearest):.3f} "
          f"(shown products {np.median(nearest[shown]):.3f})", flush=True)
    rows = []
    for threshold in THRESHOLDS:
        saved, members, same = group_saving(vectors[shown], truth[shown], cost, threshold, args.seed)
        row = {"threshold": threshold, "group_members": members, "in_lead_leaf": same, "groups_save": saved / total}
        for name, order in day_orders(len(day), args.seed).items():
            position = np.empty(len(day), np.int64)
            position[order] = np.arange(len(day))
            saved, taught = teach_saving(vectors, knn_vectors, nearest, truth, shown, cost, position, threshold)
            row |= {f"taught_{name}": taught, f"teach_saves_{name}": saved / total}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).round(4).to_string(index=False))
    groups = max(0.0, max(r["groups_save"] for r in rows))  # groups off saves nothing and costs nothing
    teach = max(max(r["teach_saves_random"], r["teach_saves_listing"]) for r in rows)
    print(f"[bench_review_ceiling] at best, groups save {groups:.1%} and teaching {teach:.1%} of the person-seconds "
          f"on this day (each at its best threshold): all on / all off >= {1 - groups - teach:.3f} (the issue's "
          "target: <= 0.80; the queue's order changes no product's cost when the queue is emptied between batches)")


if __name__ == "__main__":
    main()
