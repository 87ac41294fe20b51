"""Benchmark: how cost and quality grow with the training set (fastText + TF-IDF + stacker, 5 folds).

    .venv/bin/python bench/bench_scale.py [--sizes 283452,566904,850356] [--work /tmp/bench_scale]
                                          [--config configs/uhtt.yaml] [--seed 0] [--plot bench/scale.png]

Nested training sets: uhtt_ke's train.parquet, then train + the first rows of a seeded shuffle of
extra_labeled.parquet (same source, tree and columns). Every size predicts the same uhtt_ke test file.
Per size, each stage runs as its own CLI process in a fresh workdir: folds, train fasttext, train tfidf,
stack, submit (the saved models predicting test.parquet). Printed per stage: wall time and peak RSS (the
sum over the stage's process tree, sampled every 0.2 s); per size:
OOF hF1 of each model. Results are merged into bench/scale.json (committed: the record behind docs/results/uhtt_ke.md's
table; --results elsewhere) and drawn as a learning-curve PNG (OOF hF1 and wall time vs products).
Bars (issue 11) at 850k: wall <= 3.3x the 283k run, peak RSS <= 12 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SOURCE = ROOT.parent / "shared" / "data" / "uhtt_ke"
STAGES = (["folds"], ["train", "fasttext"], ["train", "tfidf"], ["stack"], ["submit"])


def make_dataset(n: int, folder: Path, seed: int) -> Path:
    """train.parquet + the first n - len(train) rows of a seeded shuffle of extra_labeled.parquet."""
    import numpy as np
    import pandas as pd

    train = pd.read_parquet(SOURCE / "train.parquet")
    if n > len(train):
        extra = pd.read_parquet(SOURCE / "extra_labeled.parquet")
        order = np.random.default_rng(seed).permutation(len(extra))[: n - len(train)]
        if len(order) < n - len(train):
            raise SystemExit(f"extra_labeled.parquet has {len(extra)} rows: at most {len(train) + len(extra)}")
        train = pd.concat([train, extra.iloc[np.sort(order)]], ignore_index=True)
    else:
        train = train.iloc[:n]
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet", index=False)
    for name in ("test.parquet", "categories_tree.csv"):
        target = folder / name
        if not target.exists():
            target.symlink_to(SOURCE / name)
    return folder


class TreeMemory:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, sum(rss))
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_stage(args: list[str], data: Path, workdir: Path, config: str, log) -> dict:
    cmd = [sys.executable, "-m", "prodcat", *args, "--data", str(data), "--config", config,
           "--workdir", str(workdir)]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=log, stderr=subprocess.STDOUT)
    mem = TreeMemory(proc.pid)
    code = proc.wait()
    mem.stop()
    if code:
        raise SystemExit(f"{' '.join(args)} failed (exit {code}); see {log.name}")
    return {"stage": " ".join(args), "seconds": round(time.time() - start, 1), "peak_rss_gb": round(mem.peak / 1e9, 2)}


def scores(data: Path, workdir: Path, config: str) -> dict:
    from prodcat.training.run import Run
    from prodcat.training.scores import comparison_table

    table = comparison_table(Run.open(str(data), config, workdir))
    return {row["model"]: round(float(row["hF1"]), 4) for _, row in table.iterrows()}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["products"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for model in results[0]["hF1"]:
        a.plot(n, [r["hF1"].get(model) for r in results], marker="o", label=model)
    a.set_xlabel("training products")
    a.set_ylabel("OOF hF1")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(n, [r["minutes"] for r in results], marker="o", label="measured")
    b.plot(n, [results[0]["minutes"] * x / n[0] for x in n], ls="--", color="grey", label="linear from the first")
    b.set_xlabel("training products")
    for r in results:
        if "shared" in r.get("note", ""):  # measured with other work on the same cores: an upper bound
            b.annotate("cores shared\nwith other runs", (r["products"], r["minutes"]), textcoords="offset points",
                       xytext=(-10, 12), ha="right", fontsize=8)
    b.set_ylabel("wall minutes (whole pipeline)")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle("prodcat on uhtt_ke + extra_labeled, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="283452,566904,850356", help="comma-separated training set sizes")
    ap.add_argument("--work", default="/tmp/bench_scale", help="scratch folder (datasets, workdirs, logs)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "uhtt.yaml"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle of extra_labeled")
    ap.add_argument("--plot", default=str(ROOT / "bench" / "scale.png"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "scale.json"), help="results file, merged by size")
    ap.add_argument("--again", action="store_true", help="measure the sizes again (else: reuse the results file)")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = set() if args.again else {r["products"] for r in results}
    for n in [int(s) for s in args.sizes.split(",")]:
        if n in done:
            print(f"{n}: measured earlier (in {results_path})")
            continue
        data = make_dataset(n, work / f"data_{n}", args.seed)
        workdir = work / f"run_{n}"
        shutil.rmtree(workdir, ignore_errors=True)
        stages = []
        with open(work / f"log_{n}.txt", "w") as log:
            for stage in STAGES:
                stages.append(run_stage(list(stage), data, workdir, args.config, log))
                print(f"{n:>9,} {stages[-1]['stage']:<15} {stages[-1]['seconds']:>8.1f} s "
                      f"{stages[-1]['peak_rss_gb']:>6.2f} GB", flush=True)
        result = {"products": n, "stages": stages, "minutes": round(sum(s["seconds"] for s in stages) / 60, 2),
                  "peak_rss_gb": max(s["peak_rss_gb"] for s in stages), "hF1": scores(data, workdir, args.config)}
        print(f"{n:>9,} total {result['minutes']:.1f} min, peak {result['peak_rss_gb']:.2f} GB, OOF hF1 "
              + ", ".join(f"{k} {v:.4f}" for k, v in result["hF1"].items()), flush=True)
        results = json.loads(results_path.read_text()) if results_path.exists() else []  # another run may have added
        results = [r for r in results if r["products"] != n] + [result]
        results.sort(key=lambda r: r["products"])
        from prodcat.storage import write_json

        write_json(results, results_path)  # atomic: a killed run leaves the previous record
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    if not results:
        return 0
    print(f"\n{'products':>9} {'minutes':>8} {'x first':>8} {'peak GB':>8}  " + "  ".join(
        f"{s.split()[-1]:>8}" for s in [" ".join(x) for x in STAGES]) + "  OOF hF1 (stack)")
    first = results[0]
    for r in results:
        per = "  ".join(f"{s['seconds'] / 60:>7.1f}m" for s in r["stages"])
        print(f"{r['products']:>9,} {r['minutes']:>8.1f} {r['minutes'] / first['minutes']:>7.2f}x "
              f"{r['peak_rss_gb']:>8.2f}  {per}  {r['hF1'].get('stack', float('nan')):.4f}")
    plot(results, Path(args.plot))
    print(f"learning curve: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
