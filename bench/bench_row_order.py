"""Does the order of the training rows change fastText? Measures and prints (JSON).

    ./run.sh python bench/bench_row_order.py [--data ../shared/data/uhtt_ke] [--n 60000]

A seeded sample of `--n` training products: the first 5/6 train, the rest are scored (hF1, accuracy). Each
order of the same rows (random, sorted by category, sorted by id) trains twice: with fastText's
`train_supervised` on a file written in that order (the library: it reads the file in order, with a decaying
learning rate), and with prodcat's fastText model (which writes its rows in a seeded order of their ids). The
settings are the run's (`configs/uhtt.yaml`'s size rule), the text the project's.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/uhtt_ke")
    ap.add_argument("--config", default="configs/uhtt.yaml")
    ap.add_argument("--n", type=int, default=60_000)
    args = ap.parse_args()

    import fasttext

    import prodcat.models  # noqa: F401 - registers the models
    from prodcat.evaluation.metrics import score
    from prodcat.models.fasttext import LABEL
    from prodcat.training.run import Run
    from prodcat.training.runner import make_model

    run = Run.open(data=args.data, config=args.config, workdir=tempfile.mkdtemp())
    sample = run.ds.train_frame().sample(args.n, random_state=0)
    fit, held = sample.iloc[: args.n * 5 // 6], sample.iloc[args.n * 5 // 6:]
    y = held["category_id"].to_numpy()
    out = {"fit": len(fit), "scored": len(held)}
    for name, rows in (("random", fit), ("by_category", fit.sort_values("category_id", kind="stable")),
                       ("by_id", fit.sort_values("id"))):
        model, _ = make_model(run, "fasttext")
        texts = run.env.texts(rows).tolist()
        with tempfile.TemporaryDirectory() as folder:
            path = f"{folder}/train.txt"
            with open(path, "w", encoding="utf-8") as fh:
                fh.writelines(f"{LABEL}{c} {t}\n" for c, t in zip(rows["category_id"].tolist(), texts))
            args_ = model._train_args()
            library = fasttext.train_supervised(input=path, **args_)
            pred = [int(lab[0][len(LABEL):]) for lab in library.predict(run.env.texts(held).tolist(), k=1)[0]]
            ours = model.fit(rows, folder, 0).predict(held).labels[:, 0]
        for who, p in (("train_supervised", np.array(pred)), ("prodcat", ours)):
            s = score(y, p, run.ds.tree)
            out[f"{who}_{name}"] = {"hF1": round(s["hF1"], 4), "accuracy": round(s["accuracy"], 4)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
