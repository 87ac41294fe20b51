"""How much of a labelled product's leaf its text cannot say: the listing era's labelling conventions.
Measures and prints (JSON); no model of the project is involved.

    ./run.sh python bench/bench_label_conventions.py ../shared/data/uhtt_ke [--era 200000] [--share 0.05]

Over every labelled product (train.parquet and extra_labeled.parquet), three measurements:
1. exact-title twins: products whose normalised title another labelled product has; how often the
   majority leaf of the others (leave-one-out) is the product's own;
2. can the text tell the era: a fastText fitted on the others' titles predicts the listing era (the id //
   `--era` band: what the listing order tells, and tomorrow's products lack) of a random `--share` of the
   products, against always naming the largest band;
3. the same words, another era: the share is looked up in a table of the others' majority leaf per first two
   title words - by the words alone, by the words and the true era, and by the words and the era the text
   predicts - scored on the products every table knows.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def normalised(titles: pd.Series) -> pd.Series:
    """The project's normalised titles (prodcat.data.text.normalize: what the lookup priors key on)."""
    from prodcat.data.text import normalize

    return titles.map(normalize)


def twins_agreement(frame: pd.DataFrame) -> dict:
    """Leave-one-out majority leaf among products with the same normalised title."""
    key = normalised(frame["title"])
    twins = frame.assign(key=key)[key.duplicated(keep=False) & (key != "")]
    counts = (twins.groupby(["key", "category_id"]).size().rename("same").reset_index()
              .sort_values(["key", "same"], ascending=[True, False]))
    place = counts.groupby("key").cumcount()
    best = counts[place == 0].set_index("key")["same"]
    second = counts[place == 1].set_index("key")["same"]
    rows = twins.merge(counts, on=["key", "category_id"])
    top = rows["key"].map(best).to_numpy()
    runner_up = rows["key"].map(second).fillna(0).to_numpy()
    others_best = np.where(rows["same"].to_numpy() == top, runner_up, top)  # the best other leaf's count
    return {"products_with_a_twin": len(rows), "share_of_products": round(len(rows) / len(frame), 4),
            "own_leaf_is_the_others_majority": round(float(((rows["same"] - 1) > others_best).mean()), 4)}


def lookup_accuracy(frame: pd.DataFrame, held: np.ndarray, era: int, predicted_band: np.ndarray) -> dict:
    """Majority leaf of the first two title words: alone, with the era band, and with the band the text
    predicts for the held products (the table always keyed by the others' true band); on the products every
    table knows."""
    words = normalised(frame["title"]).str.split()
    text_key = (words.str[0].fillna("") + " " + words.str[1].fillna("")).to_numpy(dtype=object)
    band = (frame["id"] // era).to_numpy()
    y = frame["category_id"].to_numpy()[held]
    tables = {}
    for name, key in (("words", text_key), ("words_and_era", text_key + "|" + band.astype(str))):
        tables[name] = (pd.DataFrame({"key": key[~held], "leaf": frame["category_id"].to_numpy()[~held]})
                        .groupby(["key", "leaf"]).size().rename("n").reset_index()
                        .sort_values("n").drop_duplicates("key", keep="last").set_index("key")["leaf"])
    preds = {"words": tables["words"].reindex(text_key[held]).to_numpy(),
             "words_and_era": tables["words_and_era"].reindex(text_key[held] + "|" + band[held].astype(str)),
             "words_and_predicted_era": tables["words_and_era"].reindex(text_key[held] + "|"
                                                                         + predicted_band.astype(str))}
    preds = {name: np.asarray(p, dtype=float) for name, p in preds.items()}
    known = np.logical_and.reduce([~np.isnan(p) for p in preds.values()])
    return {"scored": int(known.sum()), **{f"accuracy_{name}": round(float((p[known] == y[known]).mean()), 4)
                                           for name, p in preds.items()}}


def era_from_text(frame: pd.DataFrame, held: np.ndarray, era: int) -> tuple[dict, np.ndarray]:
    """fastText on the titles of the others (in file order: train.parquet's, then extra_labeled.parquet's,
    each in random order) predicts each held product's era band."""
    import fasttext

    band = (frame["id"] // era).to_numpy()
    titles = frame["title"].fillna("").str.lower().str.replace("\n", " ").to_numpy(dtype=object)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as fh:
        for b, t in zip(band[~held], titles[~held]):
            fh.write(f"__label__{b} {t}\n")
        fh.flush()
        model = fasttext.train_supervised(fh.name, epoch=5, dim=30, wordNgrams=2, minn=2, maxn=4, bucket=1_000_000,
                                          lr=0.5, thread=2, verbose=0, seed=0)
    labels, _ = model.predict(titles[held].tolist(), k=1)
    pred = np.array([int(lab[0].removeprefix("__label__")) for lab in labels])
    largest = np.bincount(band[~held]).argmax()
    return ({"era_bands": int(len(np.unique(band))), "accuracy": round(float((pred == band[held]).mean()), 4),
             "accuracy_naming_the_largest_band": round(float((band[held] == largest).mean()), 4)}, pred)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--era", type=int, default=200_000, help="ids per era band")
    ap.add_argument("--share", type=float, default=0.05, help="products looked up / predicted")
    args = ap.parse_args()
    data = Path(args.data)
    cols = ["id", "title", "category_id"]
    frame = pd.concat([pd.read_parquet(data / "train.parquet", columns=cols),
                       pd.read_parquet(data / "extra_labeled.parquet", columns=cols)], ignore_index=True)
    held = np.random.default_rng(0).random(len(frame)) < args.share
    start = time.perf_counter()
    out = {"labelled_products": len(frame), "era_ids": args.era, "held_share": args.share,
           "twins": twins_agreement(frame)}
    out["era_from_text"], predicted = era_from_text(frame, held, args.era)
    out["lookup"] = lookup_accuracy(frame, held, args.era, predicted)
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
