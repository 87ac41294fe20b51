"""fastText in the calling process or in a fresh worker process: time, peak RSS, identical models?

  ./run.sh python bench/bench_fasttext_process.py [--data ../shared/data/uhtt_ke] [--config configs/uhtt.yaml]
      [--threads 1,2]

Trains fold 0's fastText (the run's settings, texts and training rows) twice per thread count: here, in a
process that has built the texts and done the pipeline's other work (the way `train` runs it), and in a
new Python process that only trains. Prints wall time, the peak RSS each way (this process's growth while
training; the worker's own peak), the held-out accuracy, and whether the two model.bin files are
byte-identical (with 1 thread fastText is meant to be deterministic).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def peak_while(fn):
    """(result, seconds, peak RSS in bytes of this process while `fn` ran)."""
    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.time()
    out = fn()
    seconds = time.time() - start
    stop.set()
    thread.join()
    return out, seconds, peak[0]


WORKER = ("import fasttext, json, resource, sys; a = json.loads(sys.argv[2]); "
          "fasttext.train_supervised(input=sys.argv[1], **a).save_model(sys.argv[3]); "
          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def main() -> None:
    import fasttext

    from prodcat.models.fasttext import LABEL, FastTextModel
    from prodcat.training.run import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/uhtt_ke")
    parser.add_argument("--config", default="configs/uhtt.yaml")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ft_process_"))
    run = Run.open(args.data, args.config, tmp)
    train = run.ds.train_frame()
    valid = run.folds["fold"].to_numpy() == 0
    model = FastTextModel(run.model_params("fasttext"), run.env)
    texts = run.env.texts(train, model.params.get("text")).to_numpy()
    y = train["category_id"].to_numpy()
    train_file = tmp / "train.txt"
    with open(train_file, "w", encoding="utf-8") as fh:
        for cat, text in zip(y[~valid], texts[~valid]):
            fh.write(f"{LABEL}{cat} {text}\n")

    def accuracy(path):
        labels, _ = fasttext.load_model(str(path)).predict(texts[valid].tolist(), k=1)
        return float(np.mean(np.array([int(lab[0][len(LABEL):]) for lab in labels]) == y[valid]))

    print(f"fold 0: {int((~valid).sum())} training products; this process holds "
          f"{psutil.Process().memory_info().rss / 2**30:.2f} GB before training")
    for threads in [int(t) for t in args.threads.split(",")]:
        settings = model._train_args() | {"thread": threads, "verbose": 0}
        here, there = tmp / f"here{threads}.bin", tmp / f"worker{threads}.bin"
        before = psutil.Process().memory_info().rss
        ft, seconds, peak = peak_while(lambda: fasttext.train_supervised(input=str(train_file), **settings))
        ft.save_model(str(here))
        del ft
        after = psutil.Process().memory_info().rss
        start = time.time()
        done = subprocess.run([sys.executable, "-c", WORKER, str(train_file), json.dumps(settings), str(there)],
                              capture_output=True, text=True, check=True)
        worker_seconds = time.time() - start
        worker_peak = int(done.stdout.split()[-1]) * 1024
        print(f"thread {threads}: in-process {seconds:.0f}s (+{(peak - before) / 2**30:.2f} GB while training, "
              f"+{(after - before) / 2**30:.2f} GB kept after), accuracy {accuracy(here):.4f} | fresh worker "
              f"{worker_seconds:.0f}s (peak {worker_peak / 2**30:.2f} GB), accuracy {accuracy(there):.4f} | "
              f"model.bin identical: {filecmp.cmp(here, there, shallow=False)}", flush=True)


if __name__ == "__main__":
    main()
