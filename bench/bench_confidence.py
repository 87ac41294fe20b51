"""Would a learned confidence auto-accept more products than the stacker's top probability? A product-level
LightGBM predicts whether the stack's top leaf is right from the stack's top probabilities, each base model's
view of that leaf (probability, rank, agreement, margin), the kNN's `nearest` similarity, the leaf's training
count and the title's length - cross-fitted over 5 seeded folds of the stack's OOF. Prints the share
auto-accepted at 95 / 98 / 99 % precision (the thresholds `pick_threshold` picks) for both. Measures and prints.

    ./run.sh python bench/bench_confidence.py OOF_DIR DATA_DIR [--stack oof_without_id_neighbours.npz]

OOF_DIR: a dataset's OOF folder (e.g. oof/uhtt_ke: stack/ and every base model's oof.npz).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

BASE = ("fasttext", "tfidf", "knn")


def product_features(stack, oof: Path, titles: pd.Series, y: np.ndarray) -> pd.DataFrame:
    """One row per product: what the learned confidence reads."""
    from prodcat.probs import TopK

    scores, top = stack.scores.astype(np.float32), stack.labels[:, 0]
    p = np.clip(scores, 1e-9, 1)
    f = {f"stack_p{i + 1}": scores[:, i] for i in range(5)}
    f |= {"stack_margin": scores[:, 0] - scores[:, 1], "stack_entropy": -(p * np.log(p)).sum(axis=1),
          "stack_mass": scores.sum(axis=1)}
    for name in BASE:
        if not (oof / name / "oof.npz").exists():
            continue
        part = TopK.load(oof / name / "oof.npz").align(stack.ids)
        labels, s = part.labels, part.scores.astype(np.float32)
        hit = labels == top[:, None]
        f |= {f"{name}_p_top": np.where(hit, s, 0).sum(axis=1), f"{name}_rank": np.where(hit.any(1), hit.argmax(1), 99),
              f"{name}_p1": s[:, 0], f"{name}_margin": s[:, 0] - s[:, 1], f"{name}_agrees": labels[:, 0] == top}
        if "nearest" in part.flags:
            f["nearest"] = part.flags["nearest"]
    f["leaf_count"] = np.log1p(pd.Series(top).map(pd.Series(y).value_counts()).fillna(0).to_numpy())
    f["title_chars"] = titles.fillna("").str.len().to_numpy()
    f["title_words"] = titles.fillna("").str.split().str.len().to_numpy()
    return pd.DataFrame(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("oof", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--stack", default="oof_without_id_neighbours.npz", help="the stack's OOF file in OOF/stack")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import lightgbm as lgb

    from prodcat.evaluation.review import REVIEW_PRECISIONS, pick_threshold
    from prodcat.probs import TopK

    stack = TopK.load(args.oof / "stack" / args.stack)
    train = pd.read_parquet(args.data / "train.parquet", columns=["id", "title", "category_id"]).set_index("id")
    train = train.loc[stack.ids]
    y = train["category_id"].to_numpy()
    correct = (stack.labels[:, 0] == y) & ~stack.missing
    x = product_features(stack, args.oof, train["title"], y)
    fold = np.random.default_rng(args.seed).integers(0, 5, len(x))
    learned = np.zeros(len(x))
    for k in range(5):
        fit, held = fold != k, fold == k
        model = lgb.LGBMClassifier(n_estimators=400, learning_rate=0.05, num_leaves=63, min_child_samples=50,
                                   subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1)
        model.fit(x[fit], correct[fit])
        learned[held] = model.predict_proba(x[held])[:, 1]
    print(f"[bench_confidence] {len(x)} products of {args.oof / 'stack' / args.stack}, top-1 accuracy "
          f"{correct.mean():.4f}, {x.shape[1]} features")
    rows = []
    for name, confidence in (("stack top probability", stack.scores[:, 0].astype(np.float64)),
                             ("learned confidence", learned)):
        row = {"confidence": name}
        for precision in REVIEW_PRECISIONS:
            _, coverage, reached = pick_threshold(confidence, correct, precision)
            row |= {f"auto@{precision:.0%}": round(coverage, 4), f"precision@{precision:.0%}": round(reached, 4)}
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
