"""One round of learning from reviewers' decisions, simulated on labelled products the models never saw.
Measures and prints.

    ./run.sh python bench/bench_learn.py --data ../shared/data/uhtt_ke --config configs/uhtt.yaml \
        --workdir /tmp/uhtt --products ../shared/data/uhtt_ke/extra_labeled.parquet [--n 70864]

Two disjoint seeded samples of PRODUCTS (labelled, ids and titles disjoint from train's; uhtt_ke's test
labels are withheld and never used) arrive as new products (ids past every training id):
- today's: predicted with the saved full models (`--use full`, `--min-precision 0.98`); the flagged ones go
  to a simulated reviewer, who gives each its true leaf (the decisions `review export` would write);
- tomorrow's: scored before and after the base models learn from the decisions.
The learning is the full models refit on train.parquet + the decisions (what `./run.sh refit --extra` does
after `learn`'s fold training; the stacker is kept, as its rankers read the base models' probabilities, not
the products); the review thresholds stay the ones the stack's OOF confidences give.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def score_new(predictor, frame: pd.DataFrame, y: np.ndarray, tree) -> dict:
    """hF1, accuracy and the share auto-accepted at 98 % precision (with its measured precision)."""
    from prodcat.evaluation.metrics import score

    table = predictor.predict(frame, min_precision=0.98)
    accepted = ~table["needs_review"].to_numpy()
    right = table["predicted_category_id"].to_numpy() == y
    out = {k: round(v, 4) for k, v in score(y, table["predicted_category_id"].to_numpy(), tree).items()
           if k in ("hF1", "accuracy")}
    return out | {"auto-accepted": round(float(accepted.mean()), 4),
                  "precision accepted": round(float(right[accepted].mean()), 4)}, table


def main() -> None:
    from prodcat.predict import Predictor
    from prodcat.training.run import Run
    from prodcat.training.runner import make_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--products", required=True)
    ap.add_argument("--n", type=int, default=70_864)
    args = ap.parse_args()

    run = Run.open(args.data, args.config, args.workdir)
    pool = pd.read_parquet(args.products)
    pool = pool[~pool["id"].isin(run.ds.train["id"])].sample(2 * args.n, random_state=1).reset_index(drop=True)
    pool["id"] = np.arange(len(pool), dtype=np.int64) + int(run.ds.train["id"].max()) + 1  # new products
    today, tomorrow = pool.iloc[:args.n], pool.iloc[args.n:]
    predictor = Predictor.load(run.paths.models_root, use="full")
    before, _ = score_new(predictor, tomorrow.drop(columns="category_id"), tomorrow["category_id"].to_numpy(),
                          run.ds.tree)
    _, flagged_table = score_new(predictor, today.drop(columns="category_id"), today["category_id"].to_numpy(),
                                 run.ds.tree)
    reviewed = today[flagged_table["needs_review"].to_numpy()]  # the reviewer's decisions: their true leaves
    train = pd.concat([run.ds.train_frame(), reviewed.assign(image_path=None)], ignore_index=True)
    seconds, scratch = {}, Path(tempfile.mkdtemp(prefix="bench_learn-"))  # the refit children's files
    for name in predictor.base_names():
        start = time.perf_counter()
        model, _ = make_model(run, name)
        model.prepare(train)
        children = predictor.bag(name).children("full")
        children[0] = model.fit(train, scratch / name, None)  # the full child, now with the decisions
        seconds[name] = round(time.perf_counter() - start)
    after, _ = score_new(predictor, tomorrow.drop(columns="category_id"), tomorrow["category_id"].to_numpy(),
                         run.ds.tree)
    print(f"today's {len(today)} new products: {len(reviewed)} flagged and reviewed "
          f"({len(reviewed) / len(today):.1%}); refit seconds {seconds}")
    print(pd.DataFrame([{"tomorrow's products": "before the decisions", **before},
                        {"tomorrow's products": "after one round", **after}]).to_string(index=False))


if __name__ == "__main__":
    main()
