"""Fold average vs full models (refit on every product): quality, predict time, peak memory, one product's
latency. Measures and prints; each path runs in a fresh process.

    ./run.sh python bench/bench_refit.py MODELS_DIR PRODUCTS.parquet [--n 70864] [--single 300] [--uses folds,full]

PRODUCTS: labelled products the models never saw (uhtt_ke: a sample of extra_labeled.parquet, whose ids and
titles are disjoint from train's; those the models were trained on - `train_only` - are left out first). Two
views of them: their ids as given (they interleave the training ids: the Kaggle view) and new ids past every
training id (tomorrow's products).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def measure(models: str, products: str, use: str, view: str, single: int) -> dict:
    """In this (fresh) process: load, predict every product, score, then one product at a time."""
    from prodcat.data.tree import CategoryTree
    from prodcat.evaluation.metrics import score
    from prodcat.predict import Predictor

    frame = pd.read_parquet(products)
    if view == "tomorrow":
        frame["id"] = np.arange(len(frame), dtype=np.int64) + 10**9
    y = frame.pop("category_id").to_numpy()
    start = time.perf_counter()
    predictor = Predictor.load(models, use=use)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    table = predictor.predict(frame, min_precision=0.98)
    seconds = time.perf_counter() - start
    tree = CategoryTree.from_csv(Path(models) / "categories_tree.csv")
    out = {"use": use, "view": view, "n": len(frame), "load_s": round(loaded, 1), "predict_s": round(seconds, 1),
           "coverage@0.98": float((~table["needs_review"]).mean()),
           "precision_accepted": float((table["predicted_category_id"].to_numpy() == y)[~table["needs_review"]].mean())}
    out |= {k: round(v, 4) for k, v in score(y, table["predicted_category_id"].to_numpy(), tree).items()
            if k in ("hF1", "weighted_F1", "accuracy")}
    rows = np.random.default_rng(0).choice(len(frame), min(single, len(frame)), replace=False)
    times = []
    for i in rows:
        one = frame.iloc[[i]]
        t = time.perf_counter()
        predictor.predict(one)
        times.append((time.perf_counter() - t) * 1000)
    out |= {"one_product_ms_median": round(float(np.median(times)), 1),
            "one_product_ms_p95": round(float(np.percentile(times, 95)), 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("products")
    ap.add_argument("--n", type=int, default=70_864)
    ap.add_argument("--single", type=int, default=300)
    ap.add_argument("--uses", default="folds,full", help="the paths to measure (full needs ./run.sh refit first)")
    ap.add_argument("--child", nargs=2, metavar=("USE", "VIEW"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.models, args.products, *args.child, args.single)))
        return
    full = pd.read_parquet(args.products)
    with np.load(Path(args.models) / "train_ids.npz") as z:  # what the models were trained on is not unseen
        full = full[~full["id"].isin(z["ids"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_refit-") as folder:
        sample = Path(folder) / "products.parquet"
        full.sample(min(args.n, len(full)), random_state=0).to_parquet(sample, index=False)
        for view in ("as given", "tomorrow"):
            for use in args.uses.split(","):
                done = subprocess.run([sys.executable, __file__, args.models, str(sample), "--single",
                                       str(args.single), "--child", use, view], capture_output=True, text=True)
                if done.returncode:
                    sys.exit(done.stdout + done.stderr)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
