"""Benchmark: predicting a file with saved models, in a fresh process, and one product through the API.

    .venv/bin/python bench/bench_predict.py [--workdir /tmp/bench_stack] [--config configs/uhtt.yaml]

Needs a finished run in the workdir (bench/bench_stack.py makes one). Prints:
- `predict` on the dataset's test.parquet in a new process: wall time and peak RSS (issue 13: <= 2 min,
  <= 4 GB on uhtt_ke), and that its predictions equal the `all` submission;
- the Python API: load time, then the median / p90 latency of one product (<= 50 ms);
- the saved models' size on disk per model;
- the review table: top-k accuracy, calibration and the coverage at 95 / 98 / 99 % precision (OOF).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

API = """
import sys, time, json
import numpy as np, pandas as pd
t0 = time.time()
from prodcat.predict import Predictor
p = Predictor.load(sys.argv[1])
load = time.time() - t0
frame = pd.read_parquet(sys.argv[2]).head(200)
p.predict(frame.head(1))  # warm-up (numba, first calls)
lat = []
for i in range(100):
    row = frame.iloc[[i]]
    s = time.perf_counter(); p.predict(row); lat.append(time.perf_counter() - s)
print(json.dumps({"load_s": load, "median_ms": 1000 * float(np.median(lat)),
                  "p90_ms": 1000 * float(np.percentile(lat, 90))}))
"""


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "uhtt.yaml"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--workdir", default="/tmp/bench_stack")
    args = ap.parse_args()

    import json

    import pandas as pd

    from prodcat.evaluation.review import review_table
    from prodcat.training.run import Run
    from prodcat.training.scores import comparison_predictions

    run = Run.open(args.data, args.config, args.workdir)
    models = run.paths.models_root
    out = Path(args.workdir) / "bench_predict.parquet"
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "prodcat", "predict", "--input", str(run.ds.root / "test.parquet"),
           "--out", str(out), "--models", str(models), "--min-precision", "0.98"]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
    wall = time.time() - start
    print(proc.stdout + proc.stderr[-2000:])
    if proc.returncode:
        return proc.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    pred = pd.read_parquet(out)
    sub_path = run.paths.submissions / "stack.parquet"
    same = None
    if sub_path.exists():
        sub = pd.read_parquet(sub_path)
        same = bool((sub["id"].to_numpy() == pred["id"].to_numpy()).all()
                    and (sub["predicted_category_id"].to_numpy() == pred["predicted_category_id"].to_numpy()).all())
    print(f"predict: {len(pred)} products in {wall:.1f}s wall, peak RSS {peak:.2f} GB; "
          f"equals the `all` submission: {same}")

    api = subprocess.run([sys.executable, "-c", API, str(models), str(run.ds.root / "test.parquet")], env=env,
                         text=True, capture_output=True)
    if api.returncode:
        print(api.stderr[-2000:])
        return api.returncode
    res = json.loads(api.stdout.strip().splitlines()[-1])
    print(f"API: load {res['load_s']:.1f}s; one product: median {res['median_ms']:.1f} ms, "
          f"p90 {res['p90_ms']:.1f} ms")

    sizes = {d.name: du(d) for d in sorted(models.iterdir()) if d.is_dir()}
    print("saved models on disk: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items())
          + f"; total {sum(sizes.values()) / 1e9:.2f} GB")
    table = review_table(run, comparison_predictions(run))
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
