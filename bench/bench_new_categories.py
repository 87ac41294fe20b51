"""Products of new categories: a share of the leaves is withheld from training, and a day of new products
holds theirs beside ordinary ones. Measures and prints, at `--min-precision`:

- the withheld-leaf products auto-accepted (all wrong: their leaf does not exist for the models), and the
  ordinary products' auto-accepted share and precision;
- the withheld-leaf products whose true leaf is among the top 9 / 5 suggestions (and the ordinary products'),
  without the zero-shot suggestions of the empty leaves (prodcat.models.zero_shot) and with them;
- after a reviewer files the first `--first` products of each withheld leaf (their decisions join the
  models' memory at once: Predictor.remember, as the service does), the share of the rest that get their
  leaf among the top 9 / as suggestion 1, and how many of them are auto-accepted.

    ./run.sh python bench/bench_new_categories.py [--data ../shared/data/uhtt_ke] [--train 25000] [--share 0.08]
        [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "uhtt_ke"))
    ap.add_argument("--train", type=int, default=25_000)
    ap.add_argument("--share", type=float, default=0.08, help="of the leaves with >= 5 training products")
    ap.add_argument("--ordinary", type=int, default=5_000, help="ordinary products in the day")
    ap.add_argument("--per-leaf", type=int, default=50, help="products of each withheld leaf in the day at most")
    ap.add_argument("--first", type=int, default=3)
    ap.add_argument("--min-precision", type=float, default=0.98)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="a folder that keeps the split and the trained models: a second "
                    "run with the same arguments measures them again without training")
    args = ap.parse_args()
    src = Path(args.data)
    train, day, truth, withheld = split(src, args)
    is_new = np.isin(truth, list(withheld))
    with tempfile.TemporaryDirectory(prefix="bench_new_categories-") as tmp:
        tmp = args.keep or tmp
        trained_s = train_models(Path(tmp), src, train, day)

        from prodcat.predict import Predictor

        models = Path(tmp) / "w" / "models" / "d"
        predictor = Predictor.load(models)
        plain = Predictor.load(models, preload=False, zero_shot={"slots": 0})  # the same models, no zero-shot
        before = plain.predict(day, top=9, min_precision=args.min_precision)
        if args.keep:
            before.assign(truth=truth, is_new=is_new).to_parquet(Path(tmp) / "before.parquet")
        out = {"train": len(train), "leaves_withheld": len(withheld), "day": len(day),
               "new_products": int(is_new.sum()), "all_s": round(trained_s, 1)}
        out |= measure(before, truth, is_new, "no_zero_shot")
        start = time.perf_counter()
        predictor.zero_shot()
        out["zero_shot_build_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        now = predictor.with_zero_shot(before.copy(), day, 9)
        out["zero_shot_day_s"] = round(time.perf_counter() - start, 2)
        out |= measure(now, truth, is_new, "zero_shot")
        # the reviewer files the first products of each withheld leaf: they join the models' memory at once
        first = np.zeros(len(day), bool)
        for leaf in withheld:
            first[np.flatnonzero(truth == leaf)[:args.first]] = True
        filed = day[first].assign(category_id=truth[first])
        predictor.remember(filed, "bench")
        later = ~first
        after = predictor.predict(day[later], top=9, min_precision=args.min_precision)
        out |= measure(after, truth[later], is_new[later], f"after_first_{args.first}")
        print(json.dumps(out))


def split(src: Path, args) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, set]:
    """(training products, the day's products without their leaves, their true leaves, the withheld leaves):
    `args.share` of the leaves with >= 5 sampled products withheld from training, the day holding up to
    `args.per_leaf` later products of each and `args.ordinary` ordinary ones, in arrival order."""
    rng = np.random.default_rng(args.seed)
    pool = pd.read_parquet(src / "train.parquet").sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    sample = pool.iloc[:args.train + args.train // 10]
    counts = sample["category_id"].value_counts()
    eligible = counts.index[counts >= 5].to_numpy()
    withheld = set(rng.choice(eligible, int(round(args.share * len(eligible))), replace=False).tolist())
    train = sample[~sample["category_id"].isin(withheld)].iloc[:args.train]
    rest = pool.iloc[len(sample):]
    new = pd.concat([g.head(args.per_leaf) for _, g in rest[rest["category_id"].isin(withheld)].groupby("category_id")])
    ordinary = rest[~rest["category_id"].isin(withheld)].head(args.ordinary)
    day = pd.concat([new, ordinary]).sample(frac=1.0, random_state=args.seed).reset_index(drop=True)  # arrival order
    day["id"] = np.arange(len(day), dtype=np.int64) + int(pool["id"].max()) + 1  # tomorrow's: past every id
    truth = day.pop("category_id").to_numpy()
    return train, day, truth, withheld


def train_models(tmp: Path, src: Path, train: pd.DataFrame, day: pd.DataFrame) -> float:
    """`run.sh all` on the training products under `tmp` (models kept there from a run on the same products:
    none); its seconds."""
    data = tmp / "d"
    data.mkdir(parents=True, exist_ok=True)
    if (tmp / "w" / "models" / "d" / "stack" / "stacker.json").exists() and \
            pd.read_parquet(data / "train.parquet", columns=["id"])["id"].equals(train["id"].reset_index(drop=True)):
        return 0.0
    (data / "categories_tree.csv").write_bytes((src / "categories_tree.csv").read_bytes())
    train.to_parquet(data / "train.parquet", index=False)
    day.to_parquet(data / "test.parquet", index=False)
    config = tmp / "c.yaml"
    config.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\npipeline: [fasttext, tfidf, knn]\n")
    start = time.perf_counter()
    done = subprocess.run([str(REPO / "run.sh"), "all", "--data", str(data), "--config", str(config),
                           "--workdir", str(tmp / "w")], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    return time.perf_counter() - start


def measure(table: pd.DataFrame, truth: np.ndarray, is_new: np.ndarray, tag: str) -> dict:
    ordinary = ~is_new
    tops = np.stack([table[f"top{j}_category_id"].to_numpy() for j in range(1, 10)], axis=1)
    accepted = ~table["needs_review"].to_numpy()
    right = table["predicted_category_id"].to_numpy() == truth
    return {f"{tag}_new_auto_accepted": round(float(accepted[is_new].mean()), 4),
            f"{tag}_new_in_top9": round(float((tops[is_new] == truth[is_new, None]).any(axis=1).mean()), 4),
            f"{tag}_new_in_top5": round(float((tops[is_new, :5] == truth[is_new, None]).any(axis=1).mean()), 4),
            f"{tag}_ordinary_in_top9": round(float((tops[ordinary] == truth[ordinary, None]).any(axis=1).mean()), 4),
            f"{tag}_ordinary_in_top5": round(float((tops[ordinary, :5] == truth[ordinary, None]).any(axis=1).mean()),
                                             4),
            f"{tag}_new_top1": round(float(right[is_new].mean()), 4),
            f"{tag}_ordinary_auto_accepted": round(float(accepted[ordinary].mean()), 4),
            f"{tag}_ordinary_precision": round(float(right[ordinary & accepted].mean()), 4)}


if __name__ == "__main__":
    main()
