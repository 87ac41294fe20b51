"""fastText text model (fasttext-numpy2): supervised training on product texts per fold."""
from __future__ import annotations

import os
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
        import fasttext

        texts = self.run.texts(self.params.get("text"))
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=workdir, delete=False, encoding="utf-8") as fh:
            for cat, text in zip(train["category_id"].tolist(), texts.loc[train["id"]].tolist()):
                fh.write(f"{LABEL}{cat} {text}\n")
            train_file = fh.name
        try:
            model = fasttext.train_supervised(input=train_file, **self._train_args())
        finally:
            os.unlink(train_file)
        if self.params.get("save_model"):
            model.save_model(str(workdir / "model.bin"))
        return {split: self._predict(model, frame, texts) for split, frame in predict.items()}

    def _predict(self, model, frame: pd.DataFrame, texts: pd.Series) -> TopK:
        k = self.run.top_k
        lines = texts.loc[frame["id"]].tolist()
        if not lines:
            return TopK.empty(frame["id"].to_numpy(), k)
        labels, probs = model.predict(lines, k=k)
        cats = np.full((len(lines), k), -1, np.int64)
        scores = np.zeros((len(lines), k), np.float32)
        for i, (lab, pr) in enumerate(zip(labels, probs)):
            n = len(lab)
            cats[i, :n] = [int(x[len(LABEL):]) for x in lab]
            scores[i, :n] = pr
        scores /= np.maximum(scores.sum(axis=1, keepdims=True), 1e-12) if self.params.get("loss") in (
            "ns", "ova") else 1.0
        return TopK.from_ranked(frame["id"].to_numpy(), cats, scores, k)
