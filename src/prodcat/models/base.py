"""The base-model contract (fit / predict / save / load) and the storage of one fitted model.

A base model fits on training rows, predicts any frame of products into the TopK format, saves itself to a
folder in formats that execute nothing on load (npz, json, parquet, LightGBM/fastText files, torch state
dicts read with weights_only=True) and loads back in a fresh process. A new base model is one module: its
settings class and a BaseModel subclass decorated with prodcat.settings.register_model (plus its import in
prodcat.models, which fixes the registry's order).
The k-fold bag of a model's fitted children is prodcat.models.bag.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import prodcat
from prodcat.errors import DataError, NotTrainedError, SettingsError
from prodcat.probs import TopK
from prodcat.settings import MODEL_SPECS, check, complete, config_hash, deep_merge
from prodcat.storage import write_json

MODEL_FILE = "model.json"  # written last by save_model: a folder without it holds no finished model
FULL_SEED = 1000  # the seed offset of a model trained on every product (fold k's is k)


@dataclass(frozen=True)
class ModelEnv:
    """What every model needs besides its own settings: the shared text settings, how many classes to keep
    per product, the seed and (optional) a cache folder for content-keyed caches."""

    text: dict
    top_k: int = 20
    seed: int = 42
    cache: Path | None = None

    def texts(self, frame: pd.DataFrame, overrides: dict | None = None) -> pd.Series:
        """Product texts of `frame` (index: ids) for the shared text settings plus a model's overrides."""
        from prodcat.data.text import product_texts

        return product_texts(frame, deep_merge(self.text, overrides or {}), self.cache)

    def to_json(self) -> dict:
        return {"text": self.text, "top_k": self.top_k, "seed": self.seed}


class BaseModel:
    """What a base model implements (scikit-learn's estimator / AutoGluon's fit -> _fit template).

    - `_fit(train, workdir, fold)`: train this (fresh) copy on these rows; the public `fit` checks the rows,
      seeds, times and returns the fitted copy, leaving the configured model as it was (`clone`).
      `fold`: the fold left out, None for the child trained on every product.
    - `predict(frame)`: TopK for every row of `frame`, in its row order.
    - `save(folder)` / `load(folder, params, env)`: everything `predict` needs, as plain data files.
    - `prepare(train)`: optional, once per k-fold run before the folds (work shared by the folds that
      involves no labels, e.g. a vocabulary or photo embeddings); copied into each fitted child.
    What a model reads is declared, not probed: `uses_text`, `uses_photos` (`image_path`: the runner and
    predict list products without a usable photo), `uses_ids` (the listing order: a product's id is data).
    `distributed`: `_fit` trains with Lightning, whose DDP processes all take part (the extra processes of
    a multi-process launch skip the other models). `training`: raised when a change of the code makes
    the same settings train another model, so that children trained before are not reused (0: the first).
    """

    name = "base"
    uses_text = True
    uses_photos = False
    uses_ids = False
    distributed = False
    training = 0

    def __init__(self, params: dict, env: ModelEnv):
        self.params = self.checked_params(params)  # every declared key present, each of its declared type
        self.env = env

    @classmethod
    def checked_params(cls, params: dict | None) -> dict:
        """`params` checked against the model's declared settings (as YAML is), then completed: a model
        built from Python refuses an unknown key or a wrong type too."""
        spec = MODEL_SPECS.get(cls.name)
        if spec is None:
            return dict(params or {})
        try:
            checked = check(spec.settings, dict(params or {}), f"{cls.__name__} settings", "")
        except SettingsError as exc:
            raise SettingsError(f"{exc} (declared in {spec.settings.__module__}.{spec.settings.__name__})") from None
        return complete(spec.settings, checked)

    def skip_reason(self, train: pd.DataFrame) -> str | None:
        """Why this model cannot run on these training rows (e.g. no photos), or None."""
        return None

    def settings(self) -> dict:
        """Everything that changes this model's output: finished folds with other settings are redone."""
        made = {"params": self.params, "text": deep_merge(self.env.text, self.params.get("text", {})),
                "top_k": self.env.top_k, "seed": self.env.seed}
        return made | ({"training": self.training} if self.training else {})

    def prepare(self, train: pd.DataFrame) -> None:
        return None

    def clone(self) -> "BaseModel":
        """An unfitted copy with the same settings, name and prepared state (scikit-learn's `clone`; what
        `prepare` computed is shared, not copied)."""
        return copy.copy(self)

    def child_seed(self, fold: int | None) -> int:
        """The seed of the child that leaves out `fold` (None: the child trained on every product)."""
        return self.env.seed + (FULL_SEED if fold is None else fold)

    def fit(self, train: pd.DataFrame, workdir: Path | None, fold: int | None = 0) -> "BaseModel":
        """A fitted copy trained on `train` (the configured model is left as it was): the rows are checked,
        Python's and NumPy's global seeds set, the training time kept in `fit_seconds`."""
        missing = [c for c in ("id", "category_id") + (("image_path",) if self.uses_photos else ())
                   if c not in train.columns]
        if missing or not len(train):
            raise DataError(f"[{self.name}] cannot fit on these rows: "
                            + (f"column {', '.join(missing)} missing" if missing else "no training rows"))
        fitted = self.clone()
        random.seed(self.child_seed(fold))
        np.random.seed(self.child_seed(fold) % 2**32)
        start = time.perf_counter()
        fitted._fit(train, None if workdir is None else Path(workdir), fold)
        fitted.fit_seconds = time.perf_counter() - start
        return fitted

    def _fit(self, train: pd.DataFrame, workdir: Path, fold: int | None) -> None:
        raise NotImplementedError

    def predict(self, frame: pd.DataFrame) -> TopK:
        raise NotImplementedError

    def remember(self, products: pd.DataFrame | None, leaves) -> None:
        """Products people decided since the fit, with their chosen leaves, for a model that keeps a memory
        of labelled products (the kNN: they are its neighbours at once); the others learn them at the
        next fit. None: forget them."""

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, params: dict, env: ModelEnv) -> "BaseModel":
        raise NotImplementedError


def child_name(fold: int | None) -> str:
    """'fold K', or 'full' for the child trained on every product (in messages)."""
    return "full" if fold is None else f"fold {fold}"


def model_class(name: str) -> type[BaseModel]:
    """The class of a registered model."""
    if name not in MODEL_SPECS:
        raise SettingsError(f"unknown model '{name}' (known: {', '.join(MODEL_SPECS)})")
    return MODEL_SPECS[name].cls


def save_model(model: BaseModel, folder: Path, base: str, meta: dict) -> None:
    """`model.save(folder)`, then model.json (written last): which class, settings, provenance and the size
    and checksum of every file the model saved."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).unlink(missing_ok=True)
    model.save(folder)
    write_json({"model": base, "name": model.name, "params": model.params, "env": model.env.to_json(),
                "prodcat_version": prodcat.__version__, "settings": config_hash(model.settings()),
                "files": file_checksums(folder)} | meta, folder / MODEL_FILE)


def file_checksums(folder: Path, skip: str = MODEL_FILE) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file in a model folder but its description `skip`."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != skip}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def read_model_meta(folder: Path) -> dict:
    """model.json of a saved model, after `verify_files` of every file it lists."""
    meta_path = folder / MODEL_FILE
    if not meta_path.exists():
        raise NotTrainedError(f"{folder}: no saved model here ({MODEL_FILE} missing; train it first)")
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{meta_path}: not a model description of this prodcat version (unreadable, or "
                        "saved without file checksums): retrain the model (./run.sh train MODEL --force)") from None
    verify_files(folder, files)
    return meta


def verify_files(folder: Path, files: dict) -> None:
    """Every file of `files` (from `file_checksums`) is in `folder` with its recorded size and SHA-256: a
    damaged or half-copied model is named, never loaded."""
    for name, want in files.items():
        path = folder / name
        size = path.stat().st_size if path.is_file() else None
        if size != want["size"] or sha256_of(path) != want["sha256"]:
            found = "missing" if size is None else (f"{size:,} bytes where its description records "
                                                    f"{want['size']:,}" if size != want["size"]
                                                    else "its SHA-256 checksum differs from the recorded one")
            raise DataError(f"{path}: damaged or incomplete model file ({found}): copy the models folder "
                            "again, or retrain the model")


def load_model(folder: Path) -> BaseModel:
    """A saved model, ready to predict (in any process); its files are checked against model.json first."""
    meta = read_model_meta(folder)
    env = ModelEnv(**meta["env"])
    model = model_class(meta["model"]).load(folder, meta["params"], env)
    model.name = meta["name"]
    return model
