"""Benchmark: 5-fold fastText OOF + test probabilities on a dataset; prints wall time, peak RSS, scores.

  ./run.sh python bench/bench_fasttext.py [--data ../shared/data/uhtt_ke] [--config configs/uhtt.yaml]

Runs `python -m prodcat train fasttext --force` in a fresh temporary workdir (so nothing is reused),
sampling the total RSS of the whole process tree every 0.2 s.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes of the process tree, exit code)."""
    start = time.time()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    stop.set()
    thread.join()
    return time.time() - start, peak, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/uhtt_ke")
    parser.add_argument("--config", default="configs/uhtt.yaml")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_fasttext_"))
    common = ["--data", args.data, "--config", args.config, "--workdir", str(workdir)]
    py = [sys.executable, "-m", "prodcat"]
    subprocess.run(py + ["folds"] + common, check=True)
    wall, peak, code = run_measured(py + ["train", "fasttext", "--force"] + common)
    if code:
        sys.exit(code)
    subprocess.run(py + ["scores"] + common, check=True)
    oof_dir = next((workdir / "oof").iterdir()) / "fasttext"
    size = sum(p.stat().st_size for p in oof_dir.glob("*.npz"))
    print(f"\nfastText 5-fold train + OOF + test predictions: wall {wall / 60:.1f} min, "
          f"peak RSS (process tree) {peak / 2**30:.2f} GB, stored probabilities {size / 2**20:.0f} MB "
          f"({oof_dir})")


if __name__ == "__main__":
    main()
