"""The k-fold runner every base model plugs into: it trains a model's bag (prodcat.models.bag).

Per fold: fit on the other folds, save the fold child to models/<dataset>/<model>/fold<K>/, predict the
held-out fold into oof/<dataset>/<model>/fold<K>.valid.npz and write fold<K>.json last (a fold is finished
only when its json matches the training rows' content and the settings). When all folds are finished:
oof.npz (every held-out row, in train order) and the bag's bag.json. `refit_model`: the full child, trained
once on every training product with the folds' settings (models/<dataset>/<model>/full/). Test products
are never seen while training: `prodcat.predict` runs the saved children on any file.
"""
from __future__ import annotations

import shutil
import time

import numpy as np

from prodcat.distributed import is_main_process
from prodcat.errors import NotTrainedError, UsageError
from prodcat.models.bag import ONCE, Bag
from prodcat.models.base import BaseModel, child_name, model_class, save_model
from prodcat.outputs import BAG_FILE
from prodcat.probs import TopK
from prodcat.settings import MODEL_SPECS, config_hash
from prodcat.storage import write_json


def known_models(run) -> list[str]:
    """The registry's models plus the config's variants (a `models:` section with `model: <registered>`)."""
    variants = [n for n, p in run.cfg["models"].items() if isinstance(p, dict) and p.get("model") in MODEL_SPECS]
    return list(MODEL_SPECS) + [n for n in variants if n not in MODEL_SPECS]


def make_model(run, name: str) -> tuple[BaseModel, str]:
    """The configured (unfitted) model `name` and its registered base name (a variant: the base model's
    settings, overridden by the variant's)."""
    params = run.model_params(name)  # resolved: a variant holds its base's settings under its own
    base = params.pop("model", name)
    model = model_class(base)(params, run.env)
    model.name = name
    return model, base


def bag_of(run, name: str) -> Bag:
    """The bag of model `name` in this run's workdir."""
    return Bag(name, run.paths.models(name), run.paths.oof(name))


def provenance(run, model: BaseModel) -> dict:
    """What a model's children are made from: the training content and the model's settings."""
    return {"data": run.fit_fingerprint(model.name), "settings": config_hash(model.settings())}


def fold_meta(run, model: BaseModel, fold: int) -> dict:
    return {"model": model.name, "fold": fold, "k": run.k, "data": run.fit_fingerprint(model.name),
            "folds": run.ds.labels_fingerprint, "settings": config_hash(model.settings())}


def fold_done(run, model: BaseModel, fold: int) -> bool:
    """The fold child is saved whole and was made from the same training content, folds and settings."""
    return bag_of(run, model.name).child_done(fold, fold_meta(run, model, fold))


def runnable(run, name: str, echo) -> tuple[BaseModel, str] | None:
    """The configured model, or None (the reason echoed) when this process or this data cannot train it."""
    model, base = make_model(run, name)
    if not is_main_process() and not model.distributed:  # an extra process of a torchrun / SLURM launch
        echo(f"[{name}] not trained by this process (rank > 0): rank 0 trains it; one SLURM task per job "
             "for independent folds")
        return None
    reason = model.skip_reason(run.ds.train_frame())
    if reason:
        echo(f"[{name}] skipped: {reason}")
        return None
    return model, base


def train_model(run, name: str, folds: list[int] | None = None, force: bool = False, echo=print) -> bool | None:
    """Fit, save and predict the held-out rows of `name` on the requested folds (all by default); True when
    all folds are finished (the bag recorded), None when the model cannot run on this data (echoed)."""
    made = runnable(run, name, echo)
    if made is None:
        return None
    model, base = made
    if run.fits_once(name):
        if folds is not None:
            echo(f"[{name}] fitted once on the train-only products (train_only.once): it has no folds, so "
                 f"--fold is ignored")
        return train_once(run, model, base, force, echo)
    asked = list(folds if folds is not None else range(run.k))
    bad = [f for f in asked if not 0 <= f < run.k]
    if bad:
        raise UsageError(f"--fold must be between 0 and {run.k - 1} (got {bad[0]})")
    todo = [f for f in asked if force or not fold_done(run, model, f)]
    for f in sorted(set(asked) - set(todo)):
        echo(f"[{name}] fold {f}: finished earlier, reused (--force to retrain)")
    train = run.ds.train_frame()
    if todo:
        _before_training(run, model, train, echo)
    for fold in todo:
        with _lock(run, f"{name}.fold{fold}", echo):
            if not force and fold_done(run, model, fold):  # another process finished it meanwhile
                echo(f"[{name}] fold {fold}: finished by another process, reused")
                continue
            _train_fold(run, model, base, train, fold, echo)
    done = [fold_done(run, model, f) for f in range(run.k)]
    if all(done) and is_main_process():
        with _lock(run, name, echo):
            bag = bag_of(run, name)
            if todo or not bag.finished(provenance(run, model)):
                collect(run, name, provenance(run, model))
    return all(done)


def refit_model(run, name: str, force: bool = False, echo=print) -> bool | None:
    """The full child of `name`: trained once on every training product (and the train-only products the
    model is given; a model fitted once on those alone learns train.parquet's too) with the settings of its
    folds (AutoGluon's refit_full), saved to models/<dataset>/<model>/full/ and recorded in its bag; reused
    while the training content and settings are unchanged. None when the model cannot run on this data."""
    made = runnable(run, name, echo)
    if made is None:
        return None
    model, base = made
    bag = bag_of(run, name)
    if not bag.finished(provenance(run, model)):
        made_how = "child fitted once" if run.fits_once(name) else "finished folds"
        raise NotTrainedError(f"[{name}] refit needs the model's {made_how} (their OOF feeds the stacker): "
                              f"./run.sh train {name} first (./run.sh all --refit does both)")
    if not force and bag.has_full(provenance(run, model)):
        echo(f"[{name}] full: finished earlier, reused (--force to retrain)")
        return True
    train = run.ds.train_frame()
    _before_training(run, model, train, echo)
    with _lock(run, f"{name}.full", echo):
        if not force and bag.child_done(None, provenance(run, model)):  # trained, not recorded yet
            echo(f"[{name}] full: finished by another process, reused")
        else:
            _train_child(run, model, base, train, None, echo)
        if is_main_process():
            bag.record_full()
    return True


def train_once(run, model: BaseModel, base: str, force: bool, echo) -> bool:
    """A bag fitted once (`train_only.once`): one child fitted on the train-only products alone predicts every
    training product out of sample - honest stacker features without folds, for the cost of one fit - and
    new products with `--use folds` (`refit` adds the full child); once/model.json, then oof.npz, then
    bag.json. Reused while the content and settings are unchanged."""
    bag = bag_of(run, model.name)
    made_from = provenance(run, model) | {"folds": run.ds.labels_fingerprint}
    if not force and bag.finished(made_from):
        echo(f"[{model.name}] fitted once earlier, reused (--force to retrain)")
        return True
    train = run.ds.train_frame()
    rows = run.ds.train_only_frame(run.train_only_rows(model.name))
    with _lock(run, model.name, echo):
        if not force and bag.finished(made_from):
            echo(f"[{model.name}] fitted once by another process, reused")
            return True
        _before_training(run, model, train, echo, rows)
        start = time.time()
        (bag.folder / BAG_FILE).unlink(missing_ok=True)  # from here on the bag is not finished
        folder = bag.folder / ONCE
        if folder.exists():
            shutil.rmtree(folder)
        fitted = model.fit(rows, folder, None)
        save_model(fitted, folder, base, provenance(run, model) | {"once": True, "k": run.k,
                                                                   "classes": int(rows["category_id"].nunique())})
        fit_s = time.time() - start
        oof = fitted.predict(train).align(run.ds.train["id"].to_numpy())
        bag.oof_dir.mkdir(parents=True, exist_ok=True)
        oof.save(bag.oof_dir / "oof.npz")
        from prodcat.evaluation.review import save_confidence

        save_confidence(run, oof, bag.folder)
        bag.record_once(made_from)
    echo(f"[{model.name}] fitted once on {len(rows)} train-only products in {fit_s:.0f}s, predicted the "
         f"{len(train)} training products in {time.time() - start - fit_s:.0f}s")
    return True


def _before_training(run, model: BaseModel, train, echo, fit_rows=None) -> None:
    """Once before a model's children train: clean what a killed run left, list products without usable
    text (or photo), `prepare` (work shared by the children; on `fit_rows` where given) and save the tree
    beside the models."""
    if is_main_process():
        from prodcat.data.text import report_empty_products
        from prodcat.storage import clean_stale_temps

        clean_stale_temps(run.paths.oof(model.name), run.paths.models(model.name), run.paths.cache,
                          run.paths.folds.parent)
        if model.uses_text:
            report_empty_products(train, run.env.texts(train), run.paths.reports / "empty_products_train.csv",
                                  "training products", echo)
        if model.uses_photos:
            from prodcat.models.nn.vision import report_skipped

            echo(f"[{model.name}] " + report_skipped(train, run.paths.reports / "skipped_photos_train.csv"))
    model.prepare(run.ds.fit_frame(train, run.train_only_rows(model.name)) if fit_rows is None else fit_rows)
    if is_main_process():
        _save_tree(run)


def _lock(run, name: str, echo):
    """The outputs' lock in the process that writes (rank 0 under DDP: other ranks must not wait on it)."""
    from contextlib import nullcontext

    from prodcat.storage import locked

    return locked(run.paths, name, echo) if is_main_process() else nullcontext()


def _train_child(run, model: BaseModel, base: str, train, fold: int | None, echo):
    """Fit the child that leaves out `fold` (None: the full child, on every product) and save it, its
    model.json last; returns (the fitted child, the held-out mask) in the writing process, else None."""
    start = time.time()
    is_valid = (run.folds["fold"].to_numpy() == fold) if fold is not None else np.zeros(len(train), bool)
    folder = run.paths.models(model.name) / ("full" if fold is None else f"fold{fold}")
    if is_main_process() and folder.exists():
        shutil.rmtree(folder)  # a stale or half-written child is never mixed with a new one
    rows = run.ds.fit_frame(train[~is_valid], run.train_only_rows(model.name))  # + train-only products (if any)
    fitted = model.fit(rows, folder, fold)
    if not is_main_process():
        return None  # under DDP every process trains the child (gradients are shared); rank 0 writes
    save_model(fitted, folder, base, provenance(run, model) | {
        "fold": fold, "k": run.k, "classes": int(rows["category_id"].nunique())})
    if fold is None:
        echo(f"[{model.name}] full: trained on {len(rows)} products in {time.time() - start:.0f}s")
    return fitted, is_valid, start


def _train_fold(run, model: BaseModel, base: str, train, fold: int, echo) -> None:
    """Fit on the other folds, save the fold child, predict and store the held-out rows; fold<K>.json last."""
    out = run.paths.oof(model.name)
    if is_main_process():
        (out / f"fold{fold}.json").unlink(missing_ok=True)  # from here on the fold is not finished
    made = _train_child(run, model, base, train, fold, echo)
    if made is None:
        return
    fitted, is_valid, start = made
    valid = fitted.predict(train[is_valid])
    valid.save(out / f"fold{fold}.valid.npz")
    meta = fold_meta(run, model, fold) | {"seconds": round(time.time() - start, 1),
                                          "missing_valid": int(valid.missing.sum())}
    write_json(meta, out / f"fold{fold}.json")
    echo(f"[{model.name}] {child_name(fold)}: trained in {meta['seconds']:.0f}s")


def _save_tree(run) -> None:
    """The category tree and the training ids beside the saved models, so that they predict without the
    training data (and `predict` knows which products they were trained on)."""
    from prodcat.outputs import TRAIN_IDS, TREE_FILE
    from prodcat.storage import atomic_path, write_npz

    target = run.paths.models_root / TREE_FILE
    source = run.ds.root / "categories_tree.csv"
    if not target.exists() or target.read_bytes() != source.read_bytes():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    ids = np.sort(run.ds.fit_frame(run.ds.train)["id"].to_numpy(np.int64))
    ids_file = run.paths.models_root / TRAIN_IDS
    if ids_file.exists():
        with np.load(ids_file) as z:
            if np.array_equal(z["ids"], ids):
                return
    write_npz({"ids": ids}, ids_file)


def collect(run, name: str, made_from: dict) -> None:
    """Join the folds' held-out predictions in train order, keep their confidences for review thresholds,
    then record the bag (bag.json, last)."""
    from prodcat.evaluation.review import save_confidence

    bag = bag_of(run, name)
    valid = [TopK.load(bag.oof_dir / f"fold{f}.valid.npz") for f in range(run.k)]
    joined = TopK(np.concatenate([v.ids for v in valid]), np.concatenate([v.labels for v in valid]),
                  np.concatenate([v.scores for v in valid]), np.concatenate([v.missing for v in valid]),
                  {k: np.concatenate([v.flags[k] for v in valid]) for k in valid[0].flags})
    joined = joined.align(run.ds.train["id"].to_numpy())
    joined.save(bag.oof_dir / "oof.npz")
    save_confidence(run, joined, bag.folder)
    bag.record(run.k, made_from | {"folds": run.ds.labels_fingerprint})
