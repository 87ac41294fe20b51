"""The models in memory: loaded once at start-up (in the background: the service answers /health/live at
once and /health/ready when they are in), and loaded again on reload (POST /v1/reload, SIGHUP) beside the
ones that answer, then swapped in whole - a request holds the models it started with to its end, so none
is dropped or answered by a mix. A failed load keeps the models that answer and says why.

`serve.tree`: a newer category tree the service answers under (read at every load, so an edited file and a
reload take it at once; a bad file fails the load, the old state answering): leaves are matched by id,
answers show its paths, a prediction into a node that is not one of its leaves is flagged and named
(prodcat.data.tree_change.under_tree, as `predict --tree`), its new leaves are suggested by their names, are
in /v1/categories and can be chosen by reviewers - the review store is the one of that tree."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd

from prodcat.data.tree import CategoryTree
from prodcat.errors import DataError, NotTrainedError
from prodcat.predict import Predictor

log = logging.getLogger("prodcat.serve")


@dataclass
class LoadedModels:
    """One models folder, loaded: the Predictor, what it says about itself, when it was loaded, and the
    newer tree it answers under (`newer`, read from `tree_file`; None: the models' own)."""

    predictor: Predictor
    about: dict  # prodcat.serve.info.describe
    load_seconds: float
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    newer: CategoryTree | None = None
    tree_file: str | None = None

    @property
    def version(self) -> str:
        return self.about["model_version"]

    @property
    def tree(self) -> CategoryTree:
        """The tree the service answers under: its paths, leaves, review picker and review store."""
        return self.predictor.tree if self.newer is None else self.newer

    @cached_property
    def categories(self) -> list[dict]:
        """Every category of the tree (the root too, with no parent), by title path."""
        tree = self.tree
        rows = [{"id": node, "title": tree.titles.get(node, ""), "parent_id": None if node == tree.root else parent,
                 "is_leaf": node in tree.leaves, "path": tree.title_path(node)} for node, parent in tree.parent.items()]
        return sorted(rows, key=lambda row: row["path"])

    @cached_property
    def leaf_paths(self) -> list[tuple[int, str, str]]:
        """(leaf id, title path, the path case-folded) of every leaf, by path: what a category search reads."""
        tree = self.tree
        paths = [(leaf, tree.title_path(leaf)) for leaf in tree.leaves]
        return sorted(((leaf, path, path.casefold()) for leaf, path in paths), key=lambda row: row[1])


def load_models(models_dir: Path, settings: dict) -> LoadedModels:
    """The models under `models_dir` as the service settings ask (model, full or folds), every child loaded
    and checked, the default review rule picked and one product predicted: ready to answer. `serve.tree`: the
    newer tree they answer under, read now (a bad file is a DataError naming it, before the models load)."""
    from prodcat.serve.info import describe, tree_info

    start = time.perf_counter()
    tree_file = settings.get("tree")
    newer = read_newer_tree(tree_file) if tree_file else None
    predictor = Predictor.load(models_dir, settings["model"], preload=True, use=settings["use"],
                               zero_shot=settings.get("zero_shot"))
    predictor.check_top(settings["top"], "serve.top")
    about = describe(predictor, settings, newer) | {"tree": tree_info(predictor.tree, newer, tree_file)}
    # first-call costs paid now (the newer tree's zero-shot scorer built too)
    predictor.predict(pd.DataFrame({"id": [0], "title": ["warm-up"]}), top=1, tree=newer)
    return LoadedModels(predictor, about, time.perf_counter() - start, newer=newer,
                        tree_file=None if newer is None else str(tree_file))


def read_newer_tree(path) -> CategoryTree:
    """The category tree of `serve.tree` (a DataError naming the file and the setting when it is missing or
    not a tree); its notes (orphans re-attached) are logged."""
    import warnings

    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            tree = CategoryTree.from_csv(Path(path))
    except DataError as exc:
        raise DataError(f"serve.tree: {exc}") from None
    for note in notes:
        log.warning("serve.tree: %s", note.message)
    return tree


class ModelHolder:
    """The models that answer, and their loading: `current` is swapped whole (one reference), a load runs
    at most once at a time."""

    def __init__(self, models_dir: Path, settings: dict, loader=load_models, on_outcome=None):
        self.models_dir, self.settings, self.loader = Path(models_dir), settings, loader
        self.on_outcome = on_outcome or (lambda outcome: None)  # told "ok" or "failed" after each load
        self.current: LoadedModels | None = None
        self.failure: str | None = None  # why the first load failed (while nothing answers)
        self.last_reload: tuple[str, str] | None = None  # (outcome, when)
        self._loading = threading.Lock()

    @property
    def reloading(self) -> bool:
        return self._loading.locked()

    def require(self) -> LoadedModels:
        """The models that answer now, or a NotTrainedError (503) saying why there are none."""
        current = self.current
        if current is None:
            raise NotTrainedError(f"the models are not loaded: {self.failure}" if self.failure
                                  else "the models are still loading: retry when /health/ready answers 200")
        return current

    def start(self) -> threading.Thread:
        """The first load, in a background thread."""
        thread = threading.Thread(target=self._first_load, name="prodcat-load", daemon=True)
        thread.start()
        return thread

    def _first_load(self) -> None:
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001 - reported by /health/ready and every answer
            log.error("loading %s failed: %s", self.models_dir, _reason(exc))

    def load(self, new_tree: bool = False) -> tuple[LoadedModels, LoadedModels | None]:
        """Load the models folder and swap it in: (the new models, the ones they replaced). While it loads
        the old models answer; if it fails they stay (the error says why). Models that would answer under
        another category tree than the ones answering are refused (TreeChanged) unless `new_tree` or the
        operator changed the `serve.tree` file: the review desk then works in the new tree's store (decisions
        belong to the tree they were made under). One load at a time: a
        second one while another runs is a DataError."""
        if not self._loading.acquire(blocking=False):
            raise ReloadRunning("a reload is already running: wait for it (GET /v1/info shows its state)")
        try:
            loaded = self.loader(self.models_dir, self.settings)
            check_same_tree(self.current, loaded, new_tree)
            previous, self.current = self.current, loaded  # the swap: one assignment
        except Exception as exc:
            self.failure = None if self.current is not None else _reason(exc)
            self.last_reload = (f"failed: {_reason(exc)}", _now())
            self.on_outcome("failed")
            raise
        finally:
            self._loading.release()
        self.failure, self.last_reload = None, ("ok", _now())
        self.on_outcome("ok")
        log.info("models %s loaded from %s in %.1fs%s", loaded.version, self.models_dir, loaded.load_seconds,
                 f" (replacing {previous.version})" if previous else "")
        return loaded, previous

    def reload_in_background(self) -> None:
        """A reload that nobody waits for (SIGHUP): its outcome is logged and shown by GET /v1/info."""

        def run():
            try:
                self.load()
            except Exception as exc:  # noqa: BLE001 - logged; the old models keep answering
                log.error("reload of %s failed, the previous models keep answering: %s", self.models_dir,
                          _reason(exc))

        threading.Thread(target=run, name="prodcat-reload", daemon=True).start()


class ReloadRunning(DataError):
    """A reload was asked for while another one runs."""


class TreeChanged(DataError):
    """A reload onto models of another category tree, not asked for explicitly."""


def check_same_tree(current: LoadedModels | None, loaded: LoadedModels, new_tree: bool) -> None:
    """Models that answer under another tree replace the answering ones only when asked: `new_tree`, or an
    edited `serve.tree` file (the operator's own choice of tree; logged): the reviewers' decisions and queue
    belong to the tree they were made under. With `serve.tree` the tree that answers is that file's, so
    models retrained on another tree swap in while the file stays the same."""
    if current is None or new_tree:
        return
    old, new = current.tree, loaded.tree
    if old.fingerprint == new.fingerprint:
        return
    if loaded.newer is not None:
        log.warning("serve.tree %s changed (%s, %d leaves -> %s, %d leaves): answering under it now, the review "
                    "desk works in its store", loaded.tree_file, old.fingerprint, len(old.leaves), new.fingerprint,
                    len(new.leaves))
        return
    raise TreeChanged(f"the models under {loaded.predictor.root} were trained on another category tree "
                      f"({new.fingerprint}, {len(new.leaves)} leaves) than the models answering "
                      f"({old.fingerprint}, {len(old.leaves)} leaves): the reviewers' decisions and queue "
                      "belong to the old tree. Reload with ?new_tree=true to answer with the new tree and "
                      "start its review store (the old tree's decisions are kept, not served), or restart "
                      "the service")


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
