"""How well `review suspects` finds wrong training labels: a copy of a dataset with a share of its training
labels changed at random (seeded) is trained with `all`, then confident learning on the stacker's OOF
predictions lists its suspects; prints their precision and recall against the changed labels. Measures and
prints.

    ./run.sh python bench/bench_suspects.py [--data data/flipkart] [--share 0.03] [--config FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
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
    ap.add_argument("--data", default=str(REPO / "data" / "flipkart"))
    ap.add_argument("--config", default=None)
    ap.add_argument("--share", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_suspects-") as tmp:
        data = Path(tmp) / Path(args.data).name
        data.mkdir()
        for name in ("categories_tree.csv", "test.parquet"):
            shutil.copy(Path(args.data) / name, data / name)
        if (Path(args.data) / "images").exists():
            (data / "images").symlink_to((Path(args.data) / "images").resolve())
        train = pd.read_parquet(Path(args.data) / "train.parquet")
        rng = np.random.default_rng(args.seed)
        changed = rng.choice(len(train), int(round(args.share * len(train))), replace=False)
        leaves = train["category_id"].unique()
        for i in changed:  # another leaf of the data, at random
            train.loc[train.index[i], "category_id"] = rng.choice(leaves[leaves != train["category_id"].iat[i]])
        train.to_parquet(data / "train.parquet", index=False)
        common = ["--data", str(data), "--workdir", str(Path(tmp) / "w")] + (
            ["--config", args.config] if args.config else [])
        start = time.perf_counter()
        done = subprocess.run([str(REPO / "run.sh"), "all", *common], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
        trained_s = time.perf_counter() - start
        from prodcat.training.run import Run
        from prodcat.training.suspects import find_suspects

        run = Run.open(data, args.config, Path(tmp) / "w")
        wrong = set(train["id"].iloc[changed])
        for filter_by in ("confident_learning", "prune_by_noise_rate", "both"):
            for min_probability in (0.0, 0.5, 0.7, 0.9):
                found = set(find_suspects(run, filter_by=filter_by, min_probability=min_probability)["id"])
                hits = len(found & wrong)
                print(json.dumps({"data": args.data, "products": len(train), "changed": len(wrong),
                                  "filter_by": filter_by, "min_probability": min_probability,
                                  "suspects": len(found), "found_changed": hits,
                                  "precision": round(hits / max(len(found), 1), 3),
                                  "recall": round(hits / max(len(wrong), 1), 3), "all_s": round(trained_s, 1)}),
                      flush=True)


if __name__ == "__main__":
    main()
