"""A plain fastText (no folds, no stack) fitted once on every labelled product the models were given, scored
on the unseen labelled products beside them: the baseline the stack must beat for tomorrow's products.
Measures and prints.

    ./run.sh python bench/bench_plain_fasttext.py MODELS_DIR DATA_DIR [--epoch 5 --dim 100 --ngrams 2]

What it fits on: DATA_DIR/train.parquet plus the products of DATA_DIR/extra_labeled.parquet that are in the
models' train_ids.npz (what `all` gave its models); what it scores: the other products of
extra_labeled.parquet (those no model was given: `train_only.holdout`), as bench/bench_refit.py does. The
product text is the project's own (prodcat.data.text, the run's text settings).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("data")
    ap.add_argument("--epoch", type=int, default=5)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--ngrams", type=int, default=2)
    ap.add_argument("--n", type=int, default=70_864)
    args = ap.parse_args()

    import fasttext

    from prodcat.data.text import product_texts
    from prodcat.data.tree import CategoryTree
    from prodcat.evaluation.metrics import score
    from prodcat.settings import TextSettings, defaults_of

    data, models = Path(args.data), Path(args.models)
    tree = CategoryTree.from_csv(models / "categories_tree.csv")
    with np.load(models / "train_ids.npz") as z:
        given = z["ids"]
    extra = pd.read_parquet(data / "extra_labeled.parquet")
    seen = extra["id"].isin(given).to_numpy()
    fit = pd.concat([pd.read_parquet(data / "train.parquet"), extra[seen]], ignore_index=True)
    unseen = extra[~seen].sample(min(args.n, int((~seen).sum())), random_state=0)  # bench_refit's sample
    text = defaults_of(TextSettings)
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as fh:
        for cat, t in zip(fit["category_id"].tolist(), product_texts(fit, text).tolist()):
            fh.write(f"__label__{cat} {t}\n")
        fh.flush()
        texts_s = time.perf_counter() - start
        model = fasttext.train_supervised(input=fh.name, epoch=args.epoch, dim=args.dim, wordNgrams=args.ngrams,
                                          thread=2, verbose=0, seed=0)
    fit_s = time.perf_counter() - start - texts_s
    start = time.perf_counter()
    labels, probs = model.predict(product_texts(unseen, text).tolist(), k=1)
    pred = np.array([int(lab[0].removeprefix("__label__")) for lab in labels])
    conf = np.array([p[0] for p in probs])
    y = unseen["category_id"].to_numpy()
    out = {"fit_products": len(fit), "unseen": len(unseen), "texts_s": round(texts_s, 1), "fit_s": round(fit_s, 1),
           "predict_s": round(time.perf_counter() - start, 1),
           **{k: round(v, 4) for k, v in score(y, pred, tree).items() if k != "n"},
           "accuracy_at_conf_0.9": round(float((pred == y)[conf >= 0.9].mean()), 4),
           "share_conf_0.9": round(float((conf >= 0.9).mean()), 4),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "settings": {"epoch": args.epoch, "dim": args.dim, "wordNgrams": args.ngrams}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
