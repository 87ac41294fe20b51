"""The k-fold runner every base model plugs into.

Per fold: fit on the other folds, save the fold model to models/<dataset>/<model>/fold<K>/, predict the
held-out fold into oof/<dataset>/<model>/fold<K>.valid.npz and write fold<K>.json last (a fold is finished
only when its json matches the training rows' content and the settings). When all folds are finished:
oof.npz (every held-out row, in train order). Test products are never seen while training:
`prodcat.predict` runs the saved fold models on any file.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from prodcat.distributed import is_main_process
from prodcat.errors import DataError
from prodcat.models.base import MODELS, BaseModel, model_class, read_model_meta, save_model
from prodcat.probs import TopK
from prodcat.settings import config_hash
from prodcat.storage import write_json


def known_models(run) -> list[str]:
    """The registry's models plus the config's variants (a `models:` section with `model: <registered>`)."""
    variants = [n for n, p in run.cfg["models"].items() if isinstance(p, dict) and p.get("model") in MODELS]
    return list(MODELS) + [n for n in variants if n not in MODELS]


def make_model(run, name: str) -> tuple[BaseModel, str]:
    """The configured (unfitted) model `name` and its registered base name (a variant: the base model's
    settings, overridden by the variant's)."""
    params = run.model_params(name)  # resolved: a variant holds its base's settings under its own
    base = params.pop("model", name)
    model = model_class(base)(params, run.env)
    model.name = name
    return model, base


def fold_meta(run, model: BaseModel, fold: int) -> dict:
    return {"model": model.name, "fold": fold, "k": run.k, "data": run.ds.fingerprint,
            "folds": run.ds.labels_fingerprint, "settings": config_hash(model.settings())}


def fold_done(run, model: BaseModel, fold: int) -> bool:
    """The fold's model is saved whole (its files as model.json records them, checksums included) and was
    made from the same training content and settings."""
    meta_path = run.paths.oof(model.name) / f"fold{fold}.json"
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    if not all(meta.get(key) == value for key, value in fold_meta(run, model, fold).items()):
        return False  # decided before hashing the fold model's files
    try:
        read_model_meta(run.paths.models(model.name) / f"fold{fold}")
    except DataError:
        return False
    return True


def train_model(run, name: str, folds: list[int] | None = None, force: bool = False, echo=print) -> bool | None:
    """Fit, save and predict the held-out rows of `name` on the requested folds (all by default); True when
    all folds are finished, None when the model cannot run on this data (the reason is echoed)."""
    model, base = make_model(run, name)
    if not is_main_process() and not model.distributed:  # an extra process of a torchrun / SLURM launch
        echo(f"[{name}] not trained by this process (rank > 0): rank 0 trains it; one SLURM task per job "
             "for independent folds")
        return None
    train = run.ds.train_frame()
    reason = model.skip_reason(train)
    if reason:
        echo(f"[{name}] skipped: {reason}")
        return None
    todo = list(folds if folds is not None else range(run.k))
    bad = [f for f in todo if not 0 <= f < run.k]
    if bad:
        raise DataError(f"--fold must be between 0 and {run.k - 1} (got {bad[0]})")
    todo = [f for f in todo if force or not fold_done(run, model, f)]
    for f in sorted(set(range(run.k)) & set(folds if folds is not None else range(run.k)) - set(todo)):
        echo(f"[{name}] fold {f}: finished earlier, reused (--force to retrain)")
    if todo:
        if is_main_process():
            from prodcat.storage import clean_stale_temps

            clean_stale_temps(run.paths.oof(name), run.paths.models(name), run.paths.cache,
                              run.paths.folds.parent)  # what a killed run left
            from prodcat.data.text import report_empty_products

            report_empty_products(train, run.env.texts(train), run.paths.reports / "empty_products_train.csv",
                                  "training products", echo)
        if model.uses_photos and is_main_process():
            from prodcat.models.nn.vision import report_skipped

            echo(f"[{name}] " + report_skipped(train, run.paths.reports / "skipped_photos_train.csv"))
        model.prepare(train)
        if is_main_process():
            _save_tree(run)
    for fold in todo:
        with _lock(run, f"{name}.fold{fold}", echo):
            if not force and fold_done(run, model, fold):  # another process finished it meanwhile
                echo(f"[{name}] fold {fold}: finished by another process, reused")
                continue
            _train_fold(run, model, base, train, fold, echo)
    if all(fold_done(run, model, f) for f in range(run.k)):
        with _lock(run, name, echo):
            if is_main_process() and (todo or not collected(run, model)):
                collect(run, name, config_hash(model.settings()))
        return all(fold_done(run, model, f) for f in range(run.k))
    return False


def _lock(run, name: str, echo):
    """The outputs' lock in the process that writes (rank 0 under DDP: other ranks must not wait on it)."""
    from contextlib import nullcontext

    from prodcat.storage import locked

    return locked(run.paths, name, echo) if is_main_process() else nullcontext()


def _train_fold(run, model: BaseModel, base: str, train, fold: int, echo) -> None:
    """Fit on the other folds, save the fold model, predict and store the held-out rows; fold<K>.json last."""
    start = time.time()
    is_valid = run.folds["fold"].to_numpy() == fold
    folder = run.paths.models(model.name) / f"fold{fold}"
    out = run.paths.oof(model.name)
    if is_main_process():
        (out / f"fold{fold}.json").unlink(missing_ok=True)  # from here on the fold is not finished
        if folder.exists():
            shutil.rmtree(folder)  # a stale or half-written fold model is never mixed with a new one
    fitted = model.fit(train[~is_valid], folder, fold)
    if not is_main_process():
        return  # under DDP every process trains the fold (gradients are shared); rank 0 predicts and writes
    valid = fitted.predict(train[is_valid])
    meta = fold_meta(run, model, fold)
    save_model(fitted, folder, base, {"data": meta["data"], "fold": fold, "k": run.k,
                                      "classes": int(train.loc[~is_valid, "category_id"].nunique())})
    valid.save(out / f"fold{fold}.valid.npz")
    meta |= {"seconds": round(time.time() - start, 1), "missing_valid": int(valid.missing.sum())}
    write_json(meta, out / f"fold{fold}.json")
    echo(f"[{model.name}] fold {fold}: trained in {meta['seconds']:.0f}s")


def collected(run, model: BaseModel) -> bool:
    """True when oof.npz was joined from the current folds (same data and settings)."""
    path = run.paths.oof(model.name) / "complete.json"
    if not path.exists() or not (run.paths.oof(model.name) / "oof.npz").exists():
        return False
    meta = json.loads(path.read_text())
    return meta.get("data") == run.ds.fingerprint and meta.get("settings") == config_hash(model.settings())


def _save_tree(run) -> None:
    """The category tree and the training ids beside the saved models, so that they predict without the
    training data (and `predict` knows which products they were trained on)."""
    from prodcat.outputs import TRAIN_IDS
    from prodcat.storage import atomic_path, write_npz

    target = run.paths.models_root / "categories_tree.csv"
    source = run.ds.root / "categories_tree.csv"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    ids = np.sort(run.ds.train["id"].to_numpy(np.int64))
    ids_file = run.paths.models_root / TRAIN_IDS
    if ids_file.exists():
        with np.load(ids_file) as z:
            if np.array_equal(z["ids"], ids):
                return
    write_npz({"ids": ids}, ids_file)


def collect(run, name: str, settings: str = "") -> None:
    """Join the folds' held-out predictions in train order; keep their confidences for review thresholds."""
    out = run.paths.oof(name)
    valid = [TopK.load(out / f"fold{f}.valid.npz") for f in range(run.k)]
    joined = TopK(np.concatenate([v.ids for v in valid]), np.concatenate([v.labels for v in valid]),
                  np.concatenate([v.scores for v in valid]), np.concatenate([v.missing for v in valid]),
                  {k: np.concatenate([v.flags[k] for v in valid]) for k in valid[0].flags})
    joined = joined.align(run.ds.train["id"].to_numpy())
    joined.save(out / "oof.npz")
    save_confidence(run, joined, run.paths.models(name))
    write_json({"data": run.ds.fingerprint, "k": run.k, "models": name, "settings": settings},
               out / "complete.json")


def save_confidence(run, oof: TopK, folder: Path, name: str = "oof_confidence.npz") -> None:
    """OOF confidence and correctness beside the saved model: `predict --min-precision` picks its threshold
    from them without the training data."""
    from prodcat.evaluation.metrics import hierarchical_counts
    from prodcat.storage import write_npz

    y = run.ds.train["category_id"].to_numpy()
    pred = oof.top1()
    have = ~oof.missing
    counts = np.zeros((len(y), 3), np.int32)
    if have.any():
        counts[have] = hierarchical_counts(y[have], pred[have], run.ds.tree)
    write_npz({"confidence": oof.scores[:, 0].astype(np.float32), "correct": (pred == y) & have,
               "missing": ~have, "hcounts": counts}, folder / name)
