"""fastText text model (fasttext-numpy2): supervised training on product texts per fold.

Each fold is trained and predicted in a fresh worker process: fastText's training was seen to diverge
(NaN or a far worse model) in a long-lived process that had done other work, while the same input and
seed in a clean process always gave the same, good model.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.cv import BaseModel
from prodcat.probs import TopK

# fastText's own hyper-parameter names; everything else in the config section is ours
TRAIN_KEYS = ("lr", "dim", "ws", "epoch", "minCount", "minCountLabel", "minn", "maxn", "neg", "wordNgrams",
              "loss", "bucket", "thread", "lrUpdateRate", "t", "verbose", "seed")
LABEL = "__label__"


class FastTextModel(BaseModel):
    name = "fasttext"

    def settings(self) -> dict:
        return super().settings() | {"text": self.run.cfg.get("text", {}) | self.params.get("text", {})}

    def _train_args(self) -> dict:
        args = {k: v for k, v in self.params.items() if k in TRAIN_KEYS}
        if args.get("thread", "auto") == "auto":
            args["thread"] = os.cpu_count() or 1
        args.setdefault("seed", self.run.seed)
        args.setdefault("verbose", 2 if sys.stderr.isatty() else 0)
        return args

    def fit_predict(self, fold, train, predict, workdir: Path):
        texts = self.run.texts(self.params.get("text"))
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=workdir, delete=False, encoding="utf-8") as fh:
            for cat, text in zip(train["category_id"].tolist(), texts.loc[train["id"]].tolist()):
                fh.write(f"{LABEL}{cat} {text}\n")
            train_file = fh.name
        lines = {split: texts.loc[frame["id"]].tolist() for split, frame in predict.items()}
        save_to = str(workdir / "model.bin") if self.params.get("save_model") else None
        try:
            ranked = run_in_fresh_process(train_file, self._train_args(), lines, self.run.top_k, save_to)
        finally:
            os.unlink(train_file)
        out = {}
        for split, frame in predict.items():
            cats, scores = ranked[split]
            if self.params.get("loss") in ("ns", "ova"):  # independent sigmoids: make the top-K sum to one
                scores = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)
            out[split] = TopK.from_ranked(frame["id"].to_numpy(), cats, scores, self.run.top_k)
        return out


def run_in_fresh_process(train_file: str, args: dict, lines: dict[str, list[str]], k: int,
                         save_to: str | None):
    """`train_and_predict` in a new Python process (`python -m prodcat.fasttext_model JOB`)."""
    job = Path(train_file).with_suffix(".job.pkl")
    result = Path(train_file).with_suffix(".result.pkl")
    try:
        job.write_bytes(pickle.dumps((train_file, args, lines, k, save_to, str(result))))
        package_root = str(Path(__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "prodcat.fasttext_model", str(job)], env=env)
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"fastText worker failed (exit code {done.returncode}); see its output above")
        return pickle.loads(result.read_bytes())
    finally:
        job.unlink(missing_ok=True)
        result.unlink(missing_ok=True)


def train_and_predict(train_file: str, args: dict, lines: dict[str, list[str]], k: int,
                      save_to: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Worker: train on `train_file`, return {split: (category ids, scores)} of the top-k per line."""
    model = train_with_retries(train_file, args)
    if save_to:
        model.save_model(save_to)
    out = {}
    for split, texts in lines.items():
        cats = np.full((len(texts), k), -1, np.int64)
        scores = np.zeros((len(texts), k), np.float32)
        if texts:
            labels, probs = model.predict(texts, k=k)
            for i, (lab, pr) in enumerate(zip(labels, probs)):
                cats[i, :len(lab)] = [int(x[len(LABEL):]) for x in lab]
                scores[i, :len(lab)] = pr
        out[split] = (cats, scores)
    return out


def train_with_retries(train_file: str, args: dict, tries: int = 3):
    """fastText's SGD can diverge ('Encountered NaN') on small data; retry with half the learning rate."""
    import fasttext

    lr = float(args.get("lr", 0.1))
    for attempt in range(tries):
        try:
            return fasttext.train_supervised(input=train_file, **(args | {"lr": lr}))
        except RuntimeError as exc:
            if "NaN" not in str(exc) or attempt == tries - 1:
                raise
            lr /= 2
            print(f"[fasttext] training diverged (NaN); retrying with lr={lr:g}", file=sys.stderr)


if __name__ == "__main__":  # the worker of run_in_fresh_process
    job_file = Path(sys.argv[1])
    *job, result_file = pickle.loads(job_file.read_bytes())
    Path(result_file).write_bytes(pickle.dumps(train_and_predict(*job)))
