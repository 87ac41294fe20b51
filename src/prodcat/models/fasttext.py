"""fastText text model (the fasttext-community build): supervised training on product texts per fold,
in the calling process; saved as fastText's binary model (model.bin).

With `thread: 1` training is deterministic (the same rows, settings and seed give the same model.bin);
more threads train faster but not reproducibly (fastText's lock-free updates).
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np

from prodcat.errors import DataError
from prodcat.models.base import BaseModel
from prodcat.probs import TopK
from prodcat.settings import register_model, setting
from prodcat.storage import scratch_file

# fastText's own hyper-parameter names; everything else in the config section is ours
TRAIN_KEYS = ("lr", "dim", "ws", "epoch", "minCount", "minCountLabel", "minn", "maxn", "neg", "wordNgrams",
              "loss", "bucket", "thread", "lrUpdateRate", "t", "verbose", "seed")
LABEL = "__label__"
PREDICT_CHUNK = 2_000  # texts per fastText call (it holds the GIL during one)


@dataclass
class FastTextSettings:
    loss: str = setting("softmax", "fastText loss", choices=("softmax", "hs", "ns", "ova"))
    epoch: int = setting(100, "training epochs", min=1)
    lr: float = setting(0.5, "learning rate", min=0.0)
    dim: int = setting(50, "word vector size", min=1)
    wordNgrams: int = setting(2, "word n-gram length (2: bigrams)", min=1, max=6)
    minCount: int = setting(1, "minimal word count", min=1)
    minn: int = setting(0, "shortest char n-gram (0: none)", min=0)
    maxn: int = setting(0, "longest char n-gram (0: none)", min=0)
    bucket: int = setting(200_000, "hash buckets for n-grams", min=1)
    neg: int = setting(5, "negatives sampled (loss ns)", min=1)
    ws: int = setting(5, "context window", min=1)
    thread: Union[int, str] = setting(1, "threads; 'auto' = all cores (1 is deterministic)", min=1,
                                      choices=("auto",))
    text: dict = setting({}, "text settings for this model only (keys of `text`)")


@register_model("fasttext", FastTextSettings)
class FastTextModel(BaseModel):
    training = 1  # 1: the rows in a seeded order of their ids (0: the order given)

    def __init__(self, params, env):
        super().__init__(params, env)
        self.model_file: Path | None = None
        self._ft = None
        self._category: dict[str, int] | None = None  # the model's labels -> category ids

    def settings(self) -> dict:
        """The base settings plus the fastText build: folds trained by another build are retrained."""
        return super().settings() | {"build": fasttext_build()}

    def _train_args(self) -> dict:
        args = {k: v for k, v in self.params.items() if k in TRAIN_KEYS}
        if args["thread"] == "auto":
            args["thread"] = os.cpu_count() or 1
        args.setdefault("seed", self.env.seed)
        args.setdefault("verbose", 2 if sys.stderr.isatty() else 0)
        return args

    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        texts = self.env.texts(train, self.params.get("text"))
        import fasttext

        self.model_file = workdir / "model.bin"
        # fastText reads its file in order, with a decaying learning rate: rows sorted by category (a catalogue
        # export) train a model of the last categories (bench/bench_row_order.py). It reads them in a seeded
        # order of their ids, so any order of the same rows trains the same model.
        order = np.random.default_rng(self.child_seed(fold)).permutation(len(train))
        order = np.argsort(train["id"].to_numpy(), kind="stable")[order]
        cats, texts = train["category_id"].to_numpy()[order].tolist(), texts.to_numpy()[order].tolist()
        with scratch_file(workdir, "train.txt") as train_file:  # a killed run's one is cleaned at the next
            with open(train_file, "w", encoding="utf-8") as fh:
                for cat, text in zip(cats, texts):
                    fh.write(f"{LABEL}{cat} {text}\n")
            try:
                self._ft, self._category = fasttext.train_supervised(input=str(train_file),
                                                                     **self._train_args()), None
            except (RuntimeError, ValueError) as exc:  # e.g. no label reaches minCountLabel: one message
                raise DataError(f"fastText could not train on these rows: {exc} (check models.fasttext: "
                                "./run.sh config)") from None
        self._ft.save_model(str(self.model_file))

    def _fasttext(self):
        if self._ft is None:
            import fasttext

            self._ft = fasttext.load_model(str(self.model_file))
        if self._category is None:
            self._category = {x: int(x[len(LABEL):]) for x in self._ft.get_labels()}
        return self._ft

    def predict(self, frame) -> TopK:
        k = self.env.top_k
        texts = self.env.texts(frame, self.params.get("text")).tolist()
        cats = np.full((len(texts), k), -1, np.int64)
        scores = np.zeros((len(texts), k), np.float32)
        if texts:
            model = self._fasttext()
            labels, probs = [], []
            for start in range(0, len(texts), PREDICT_CHUNK):  # between chunks other threads may run
                lab, pr = model.predict(texts[start:start + PREDICT_CHUNK], k=k)
                labels += lab
                probs += list(pr)
            category = self._category
            if all(len(lab) == k for lab in labels):  # the usual case: k classes for every product
                flat = (category[x] for lab in labels for x in lab)
                cats[:] = np.fromiter(flat, np.int64, len(texts) * k).reshape(-1, k)
                scores[:] = np.asarray(probs, np.float32).reshape(-1, k)
            else:
                for i, (lab, pr) in enumerate(zip(labels, probs)):
                    cats[i, :len(lab)] = [category[x] for x in lab]
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


@lru_cache(maxsize=1)
def fasttext_build() -> str:
    """'<distribution> <version>' of the installed package that provides the `fasttext` module."""
    from importlib.metadata import packages_distributions, version

    names = packages_distributions().get("fasttext", [])
    return " ".join(f"{n} {version(n)}" for n in sorted(set(names))) or "unknown"
