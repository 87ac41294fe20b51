"""fastText text model (fasttext-numpy2): supervised training on product texts per fold.

Each fold is trained in a fresh worker process, which saves fastText's binary model (model.bin):
fastText's training was seen to diverge (NaN or a far worse model) in a long-lived process that had done
other work, while the same input and seed in a clean process always gave the same, good model.
Predicting loads model.bin in the calling process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from prodcat.errors import DataError
from prodcat.models.base import BaseModel
from prodcat.probs import TopK

# fastText's own hyper-parameter names; everything else in the config section is ours
TRAIN_KEYS = ("lr", "dim", "ws", "epoch", "minCount", "minCountLabel", "minn", "maxn", "neg", "wordNgrams",
              "loss", "bucket", "thread", "lrUpdateRate", "t", "verbose", "seed")
LABEL = "__label__"


class FastTextModel(BaseModel):
    name = "fasttext"

    def __init__(self, params, env):
        super().__init__(params, env)
        self.model_file: Path | None = None
        self._ft = None

    def _train_args(self) -> dict:
        args = {k: v for k, v in self.params.items() if k in TRAIN_KEYS}
        if args["thread"] == "auto":
            args["thread"] = os.cpu_count() or 1
        args.setdefault("seed", self.env.seed)
        args.setdefault("verbose", 2 if sys.stderr.isatty() else 0)
        return args

    def fit(self, train, workdir: Path, fold: int = 0):
        texts = self.env.texts(train, self.params.get("text"))
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=workdir, delete=False, encoding="utf-8") as fh:
            for cat, text in zip(train["category_id"].tolist(), texts.tolist()):
                fh.write(f"{LABEL}{cat} {text}\n")
            train_file = fh.name
        self.model_file = workdir / "model.bin"
        try:
            train_in_fresh_process(train_file, self._train_args(), str(self.model_file))
        finally:
            os.unlink(train_file)
        self._ft = None
        return self

    def _fasttext(self):
        if self._ft is None:
            import fasttext

            self._ft = fasttext.load_model(str(self.model_file))
        return self._ft

    def predict(self, frame) -> TopK:
        k = self.env.top_k
        texts = self.env.texts(frame, self.params.get("text")).tolist()
        cats = np.full((len(texts), k), -1, np.int64)
        scores = np.zeros((len(texts), k), np.float32)
        if texts:
            try:
                labels, probs = self._fasttext().predict(texts, k=k)
            except RuntimeError as exc:  # a model whose weights diverged without failing its training
                if "NaN" not in str(exc):
                    raise
                import warnings

                warnings.warn(f"fastText ({self.model_file}) gives NaN scores: no fastText prediction for these "
                              f"{len(texts)} products (retrain it, e.g. with a smaller models.fasttext.lr)")
                return TopK.empty(frame["id"].to_numpy(), k)
            for i, (lab, pr) in enumerate(zip(labels, probs)):
                cats[i, :len(lab)] = [int(x[len(LABEL):]) for x in lab]
                scores[i, :len(lab)] = pr
        if self.params.get("loss") in ("ns", "ova"):  # independent sigmoids: make the top-K sum to one
            scores = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)
        return TopK.from_ranked(frame["id"].to_numpy(), cats, scores, k)

    def save(self, folder: Path) -> None:
        target = folder / "model.bin"
        if self.model_file.resolve() != target.resolve():
            shutil.copyfile(self.model_file, target)

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "FastTextModel":
        model = cls(params, env)
        model.model_file = folder / "model.bin"
        return model


def train_in_fresh_process(train_file: str, args: dict, save_to: str) -> None:
    """`train_with_retries` + save_model in a new Python process (`python -m prodcat.models.fasttext JOB`)."""
    job = Path(train_file).with_suffix(".job.json")
    try:
        job.write_text(json.dumps({"train_file": train_file, "args": args, "save_to": save_to}))
        package_root = str(Path(__file__).resolve().parents[2])  # src/
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "prodcat.models.fasttext", str(job)], env=env,
                              stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        for line in (done.stderr or "").splitlines():  # the worker's own notes (a retry after NaN) are shown
            if line.startswith("[fasttext]"):
                print(line, file=sys.stderr, flush=True)
        if done.returncode != 0 or not Path(save_to).exists():
            last = (done.stderr or "").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise DataError(f"fastText could not train on these rows: {last[0]} (check models.fasttext: "
                            "./run.sh config)")
    finally:
        job.unlink(missing_ok=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker is killed when the process that started it dies (no orphan workers)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def train_with_retries(train_file: str, args: dict, tries: int = 6):
    """fastText's SGD can diverge ('Encountered NaN') on small data; retry with half the learning rate."""
    import fasttext

    lr = float(args["lr"])
    for attempt in range(tries):
        try:
            return fasttext.train_supervised(input=train_file, **(args | {"lr": lr}))
        except RuntimeError as exc:
            if "NaN" not in str(exc) or attempt == tries - 1:
                raise
            lr /= 2
            print(f"[fasttext] training diverged (NaN); retrying with lr={lr:g}", file=sys.stderr)


if __name__ == "__main__":  # the worker of train_in_fresh_process: one line on failure, no traceback
    job = json.loads(Path(sys.argv[1]).read_text())
    try:
        train_with_retries(job["train_file"], job["args"]).save_model(job["save_to"])
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
