"""Benchmark: fastText + TF-IDF + LightGBM stacker on uhtt_ke, 5 folds, raw data -> validated submission.

    .venv/bin/python bench/bench_stack.py [--config configs/uhtt.yaml] [--workdir /tmp/bench_stack] [--keep]

Runs `python -m prodcat all` in a fresh workdir (so folds, texts, both base models, the stacker and the
submission are all computed), then prints the wall time, the peak RSS of the run (the largest process:
getrusage of the children), the time of each stage, the validated submission and the score table.
Targets (issue 5): stacker OOF hF1 >= best single model + 0.010 and > the plain average; < 40 min; <= 8 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "uhtt.yaml"))
    ap.add_argument("--data", default=None, help="dataset folder (default: the config's)")
    ap.add_argument("--workdir", default="/tmp/bench_stack")
    ap.add_argument("--keep", action="store_true", help="reuse finished folds in the workdir (not a cold run)")
    args = ap.parse_args()

    workdir = Path(args.workdir)
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)
    cmd = [sys.executable, "-m", "prodcat", "all", "--config", args.config, "--workdir", str(workdir)]
    if args.data:
        cmd += ["--data", args.data]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.time() - start
    lines = [ln for ln in proc.stdout.splitlines() if "warning" not in ln.lower()]
    print("\n".join(lines))
    if proc.returncode:
        print(f"FAILED (exit {proc.returncode}) after {wall:.0f}s")
        return proc.returncode
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

    import pandas as pd

    from prodcat.training.run import Run
    from prodcat.training.scores import comparison_table
    from prodcat.training.submission import validate_submission

    run = Run.open(args.data, args.config, workdir)
    sub_path = run.paths.submissions / "stack.parquet"
    sub = pd.read_parquet(sub_path)
    validate_submission(sub, run, str(sub_path))
    print(f"\nsubmission {sub_path}: {len(sub)} rows, validated")
    for model in run.cfg.get("pipeline", []):
        metas = [json.loads(p.read_text()) for p in sorted(run.paths.oof(model).glob("fold*.json"))]
        if metas:
            secs = [m.get("seconds", 0) for m in metas]
            print(f"{model}: {len(metas)} folds, {sum(secs):.0f}s ({', '.join(f'{s:.0f}' for s in secs)})")
    stack = json.loads((run.paths.oof("stack") / "stack.json").read_text())
    print(f"stack: {stack['seconds']:.0f}s, {stack['candidates_per_product']} candidates per product, "
          f"recall {stack['candidate_recall']:.4f}, OOF hF1 argmax {stack['oof_hF1']['argmax']:.4f} / "
          f"expected-hF1 {stack['oof_hF1']['expected_hf1']:.4f} (decoding: {stack['decoding']})")
    table = comparison_table(run)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    base = table[~table["model"].isin(["average"]) & ~table["model"].str.startswith("stack")]
    best = base["hF1"].max()
    st = float(table.loc[table["model"] == "stack", "hF1"].iloc[0])
    avg = table.loc[table["model"] == "average", "hF1"]
    print(f"\nwall {wall / 60:.1f} min (target < 40), peak RSS {peak_kb / 1e6:.2f} GB (target <= 8)")
    print(f"stack - best single = {st - best:+.4f} (target >= +0.010); stack - average = "
          f"{st - float(avg.iloc[0]) if len(avg) else float('nan'):+.4f} (target > 0); stack hF1 {st:.4f} (aim 0.935)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
