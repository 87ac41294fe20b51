"""fastText settings sweep on one fold: trains on the other folds' products, scores the held-out fold.

  ./run.sh python bench/tune_fasttext.py [--data ../shared/data/uhtt_ke] [--config configs/uhtt.yaml]
      [--fold 0] [--grid NAME=VALUES ...]      e.g. --grid epoch=5,10 --grid dim=30,100

Texts are the pipeline's own (the run's text settings); each setting starts from the run's resolved
fastText settings, changes what the grid names, trains in this process and prints wall time, accuracy and
hF1 of the held-out products, one line per combination (fastText itself, nothing reused).
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np
import yaml


def main() -> None:
    import fasttext

    from prodcat.evaluation.metrics import hierarchical_f1
    from prodcat.models.fasttext import LABEL, FastTextModel
    from prodcat.training.run import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/uhtt_ke")
    parser.add_argument("--config", default="configs/uhtt.yaml")
    parser.add_argument("--workdir", default=None, help="for the folds (default: a temporary folder)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2")
    args = parser.parse_args()
    run = Run.open(args.data, args.config, args.workdir or tempfile.mkdtemp(prefix="tune_fasttext_"))
    train = run.ds.train_frame()
    valid = run.folds["fold"].to_numpy() == args.fold
    model = FastTextModel(run.model_params("fasttext"), run.env)
    texts = run.env.texts(train, model.params.get("text")).to_numpy()
    y = train["category_id"].to_numpy()
    base = model._train_args()
    grid = {k: [yaml.safe_load(v) for v in vals.split(",")] for k, vals in (g.split("=", 1) for g in args.grid)}
    print(f"{len(texts[~valid])} training / {len(texts[valid])} held-out products (fold {args.fold}); "
          f"base settings {base}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        for cat, text in zip(y[~valid], texts[~valid]):
            fh.write(f"{LABEL}{cat} {text}\n")
    try:
        for combo in itertools.product(*grid.values()) if grid else [()]:
            settings = base | dict(zip(grid, combo))
            start = time.time()
            ft = fasttext.train_supervised(input=fh.name, **settings)
            seconds = time.time() - start
            labels, _ = ft.predict(texts[valid].tolist(), k=1)
            pred = np.array([int(lab[0][len(LABEL):]) for lab in labels])
            print(f"{dict(zip(grid, combo))}: {seconds:.0f}s, accuracy {np.mean(pred == y[valid]):.4f}, "
                  f"hF1 {hierarchical_f1(y[valid], pred, run.ds.tree):.4f}", flush=True)
    finally:
        os.unlink(fh.name)


if __name__ == "__main__":
    main()
