"""Train a base model fold by fold and store its out-of-fold and fold-averaged test probabilities.

Layout under oof/<dataset>/<model>/: fold<K>.valid.npz, fold<K>.test.npz and fold<K>.json (written
last: a fold is finished only when its json exists and matches the data and settings), then oof.npz
(all folds' held-out rows, in train order) and test.npz (test probabilities averaged over folds).
"""
from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.config import config_hash, deep_merge
from prodcat.probs import TopK, average
from prodcat.run import Run
from prodcat.storage import write_json

MODELS = {  # name -> "module:Class"; imported only when used (torch is not loaded for fastText)
    "fasttext": "prodcat.fasttext_model:FastTextModel",
    "tfidf": "prodcat.tfidf_model:TfidfModel",
    "image": "prodcat.image_model:ImageModel",
    "coca": "prodcat.coca_model:CocaModel",
}


class BaseModel:
    """What a base model implements: train on some rows, return TopK for other rows.

    `fit_predict(fold, train, predict, workdir)` gets the training rows (with category_id and a
    `text` column), a dict of frames to predict ('valid', 'test') and a folder for its checkpoints;
    it returns a TopK per frame, in the frame's row order.
    """

    name = "base"

    def __init__(self, run: Run, params: dict):
        self.run = run
        self.params = params

    def skip_reason(self) -> str | None:
        """Why this model cannot run on this dataset (e.g. no images), or None."""
        return None

    def settings(self) -> dict:
        """Everything that changes this model's output: finished folds with other settings are redone."""
        return {"params": self.params, "text": self.run.cfg.get("text", {}), "top_k": self.run.top_k,
                "seed": self.run.seed}

    def fit_predict(self, fold: int, train: pd.DataFrame, predict: dict[str, pd.DataFrame],
                    workdir: Path) -> dict[str, TopK]:
        raise NotImplementedError


def known_models(run: Run) -> list[str]:
    """The registry's models plus the config's variants (a `models:` section with `model: <registered>`)."""
    variants = [n for n, p in run.cfg.get("models", {}).items() if isinstance(p, dict) and p.get("model") in MODELS]
    return list(MODELS) + [n for n in variants if n not in MODELS]


def model_class(name: str) -> type[BaseModel]:
    """The class of a registered model."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def fold_meta(run: Run, model: BaseModel, fold: int) -> dict:
    return {"model": model.name, "fold": fold, "k": run.k, "data": run.ds.fingerprint,
            "settings": config_hash(model.settings())}


def fold_done(run: Run, model: BaseModel, fold: int) -> bool:
    meta_path = run.paths.oof(model.name) / f"fold{fold}.json"
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    expected = fold_meta(run, model, fold)
    return all(meta.get(key) == value for key, value in expected.items())


def train_model(run: Run, name: str, folds: list[int] | None = None, force: bool = False,
                echo=print) -> bool:
    """Train `name` on the requested folds (all by default); True when all folds are finished."""
    params = run.model_params(name)
    base = params.pop("model", name)
    if base != name:  # a variant: the base model's settings, overridden by the variant's
        params = deep_merge(run.model_params(base), params)
    model = model_class(base)(run, params)
    model.name = name  # a config variant writes under its own name
    reason = model.skip_reason()
    if reason:
        echo(f"[{name}] skipped: {reason}")
        return False
    out = run.paths.oof(name)
    table = run.folds
    train = run.ds.train.assign(fold=table["fold"].to_numpy())
    for fold in folds if folds is not None else range(run.k):
        if not 0 <= fold < run.k:
            raise ValueError(f"--fold must be between 0 and {run.k - 1} (got {fold})")
        if not force and fold_done(run, model, fold):
            echo(f"[{name}] fold {fold}: finished earlier, reused (--force to retrain)")
            continue
        start = time.time()
        is_valid = train["fold"].to_numpy() == fold
        preds = model.fit_predict(fold, train[~is_valid], {"valid": train[is_valid], "test": run.ds.test},
                                  run.paths.models(name) / f"fold{fold}")
        if not is_main_process():
            continue  # under DDP every rank runs this loop; only rank 0 writes
        preds["valid"].save(out / f"fold{fold}.valid.npz")
        preds["test"].save(out / f"fold{fold}.test.npz")
        meta = fold_meta(run, model, fold) | {"seconds": round(time.time() - start, 1),
                                              "missing_valid": int(preds["valid"].missing.sum())}
        write_json(meta, out / f"fold{fold}.json")
        echo(f"[{name}] fold {fold}: trained in {meta['seconds']:.0f}s")
    if all(fold_done(run, model, f) for f in range(run.k)):
        if is_main_process():
            collect(run, name)
        return True
    return False


def is_main_process() -> bool:
    """False in the extra processes of a multi-GPU / multi-node (DDP) run: rank 0 alone writes outputs."""
    return all(int(os.environ.get(var, 0) or 0) == 0 for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def collect(run: Run, name: str) -> None:
    """Join the folds' held-out predictions (train order) and average their test predictions."""
    out = run.paths.oof(name)
    valid = [TopK.load(out / f"fold{f}.valid.npz") for f in range(run.k)]
    joined = TopK(np.concatenate([v.ids for v in valid]), np.concatenate([v.labels for v in valid]),
                  np.concatenate([v.scores for v in valid]), np.concatenate([v.missing for v in valid]),
                  {k: np.concatenate([v.flags[k] for v in valid]) for k in valid[0].flags})
    joined.align(run.ds.train["id"].to_numpy()).save(out / "oof.npz")
    tests = [TopK.load(out / f"fold{f}.test.npz") for f in range(run.k)]
    average(tests, k=run.top_k).save(out / "test.npz")
    write_json({"data": run.ds.fingerprint, "k": run.k, "models": name}, out / "complete.json")


def finished_models(run: Run) -> list[str]:
    """Models whose OOF and test probabilities are complete for this dataset, in registry order."""
    names = []
    root = run.paths.oof_root
    if not root.exists():
        return names
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = d / "complete.json"
        if meta.exists() and json.loads(meta.read_text()).get("data") == run.ds.fingerprint:
            names.append(d.name)
    order = list(MODELS)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
