"""The similarity threshold of review groups (review.group_similarity): on a seeded sample of labelled products,
per threshold the pairs of products whose title cosine reaches it, the share of those pairs in one leaf, the share
of the products grouped and of their members in their lead's leaf; then the lowest threshold where both shares in
one leaf reach `--precision` (prodcat.review.groups.pick_group_similarity). Measures and prints (~80 s).

    ./run.sh python bench/bench_groups.py [--data ../shared/data/uhtt_ke] [--rows 50000] [--precision 0.98]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from prodcat.review.groups import pick_group_similarity

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "uhtt_ke"))
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--precision", type=float, default=0.98)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train = pd.read_parquet(Path(args.data) / "train.parquet", columns=["id", "title", "category_id"])
    sample = train.sample(min(args.rows, len(train)), random_state=args.seed)
    started = time.perf_counter()
    threshold, curve = pick_group_similarity(sample["title"].tolist(), sample["category_id"].to_numpy(),
                                             args.precision)
    print(f"[bench_groups] {len(sample)} products of {args.data} (seed {args.seed}), "
          f"{time.perf_counter() - started:.0f}s")
    print(f"{'threshold':>9} {'pairs':>9} {'pair precision':>14} {'grouped':>8} {'member precision':>16}")
    for row in curve.itertuples(index=False):
        if round(row.threshold * 100) % 5 == 0 or abs(row.threshold - (threshold or -1)) < 0.021:
            precision = "-" if row.pair_precision is None or pd.isna(row.pair_precision) else \
                f"{row.pair_precision:.4f}"
            member = "-" if row.member_precision is None or pd.isna(row.member_precision) else \
                f"{row.member_precision:.4f}"
            print(f"{row.threshold:9.2f} {row.pairs:9d} {precision:>14} {row.grouped:8.2%} {member:>16}")
    print(f"[bench_groups] lowest threshold whose pairs and groups share a leaf >= {args.precision}: {threshold}")


if __name__ == "__main__":
    main()
