"""The base-model contract (fit / predict / save / load), the registry of base models and their storage.

A base model fits on training rows, predicts any frame of products into the TopK format, saves itself to a
folder in formats that execute nothing on load (npz, json, parquet, LightGBM/fastText files, torch state
dicts read with weights_only=True) and loads back in a fresh process. A new base model is one module with
a BaseModel subclass plus one line in MODELS (and its settings class in prodcat.settings).
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import prodcat
from prodcat.errors import DataError, NotTrainedError
from prodcat.probs import TopK
from prodcat.settings import MODEL_SETTINGS, complete, config_hash, deep_merge
from prodcat.storage import write_json

MODELS = {  # name -> "module:Class"; imported only when used (torch is not loaded for fastText)
    "fasttext": "prodcat.models.fasttext:FastTextModel",
    "tfidf": "prodcat.models.tfidf:TfidfModel",
    "image": "prodcat.models.image:ImageModel",
    "coca": "prodcat.models.coca:CocaModel",
    "id_neighbours": "prodcat.models.id_neighbours:IdNeighboursModel",
}
MODEL_FILE = "model.json"  # written last by save_model: a folder without it holds no finished model


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
    """What a base model implements (scikit-learn / AutoGluon style).

    - `fit(train, workdir, fold)`: train on these rows (with category_id, the text columns and
      `image_path`); `workdir` is the fold's model folder (checkpoints, logs).
    - `predict(frame)`: TopK for every row of `frame`, in its row order.
    - `save(folder)` / `load(folder, params, env)`: everything `predict` needs, as plain data files.
    - `prepare(train)`: optional, once per k-fold run before the folds (work shared by the folds that
      involves no labels, e.g. a vocabulary or photo embeddings).
    - `distributed`: True when `fit` trains with Lightning, whose DDP processes all take part; the extra
      processes of a multi-process launch skip the other models (rank 0 trains them).
    - `uses_photos`: True when the model reads the products' photos.
    """

    name = "base"
    distributed = False
    uses_photos = False  # True: reads `image_path` (the runner and predict list products without a usable photo)

    def __init__(self, params: dict, env: ModelEnv):
        schema = MODEL_SETTINGS.get(type(self).name)
        self.params = complete(schema, params) if schema else params  # every declared key present
        self.env = env

    def skip_reason(self, train: pd.DataFrame) -> str | None:
        """Why this model cannot run on these training rows (e.g. no photos), or None."""
        return None

    def settings(self) -> dict:
        """Everything that changes this model's output: finished folds with other settings are redone."""
        return {"params": self.params, "text": deep_merge(self.env.text, self.params.get("text", {})),
                "top_k": self.env.top_k, "seed": self.env.seed}

    def prepare(self, train: pd.DataFrame) -> None:
        return None

    def fit(self, train: pd.DataFrame, workdir: Path, fold: int = 0) -> "BaseModel":
        raise NotImplementedError

    def predict(self, frame: pd.DataFrame) -> TopK:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, params: dict, env: ModelEnv) -> "BaseModel":
        raise NotImplementedError


def model_class(name: str) -> type[BaseModel]:
    """The class of a registered model."""
    if name not in MODELS:
        raise DataError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


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
