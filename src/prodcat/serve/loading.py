"""The models in memory: loaded once at start-up (in the background: the service answers /health/live at
once and /health/ready when they are in), and loaded again on reload (POST /v1/reload, SIGHUP) beside the
ones that answer, then swapped in whole - a request holds the models it started with to its end, so none
is dropped or answered by a mix. A failed load keeps the models that answer and says why."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd

from prodcat.errors import DataError, NotTrainedError
from prodcat.predict import Predictor

log = logging.getLogger("prodcat.serve")


@dataclass
class LoadedModels:
    """One models folder, loaded: the Predictor, what it says about itself, when it was loaded."""

    predictor: Predictor
    about: dict  # prodcat.serve.info.describe
    load_seconds: float
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def version(self) -> str:
        return self.about["model_version"]

    @cached_property
    def categories(self) -> list[dict]:
        """Every category of the tree (the root too, with no parent), by title path."""
        tree = self.predictor.tree
        rows = [{"id": node, "title": tree.titles.get(node, ""), "parent_id": None if node == tree.root else parent,
                 "is_leaf": node in tree.leaves, "path": tree.title_path(node)} for node, parent in tree.parent.items()]
        return sorted(rows, key=lambda row: row["path"])

    @cached_property
    def leaf_paths(self) -> list[tuple[int, str, str]]:
        """(leaf id, title path, the path case-folded) of every leaf, by path: what a category search reads."""
        tree = self.predictor.tree
        paths = [(leaf, tree.title_path(leaf)) for leaf in tree.leaves]
        return sorted(((leaf, path, path.casefold()) for leaf, path in paths), key=lambda row: row[1])


def load_models(models_dir: Path, settings: dict) -> LoadedModels:
    """The models under `models_dir` as the service settings ask (model, full or folds), every child loaded
    and checked, the default review rule picked and one product predicted: ready to answer."""
    from prodcat.serve.info import describe

    start = time.perf_counter()
    predictor = Predictor.load(models_dir, settings["model"], preload=True, use=settings["use"],
                               zero_shot=settings.get("zero_shot"))
    predictor.check_top(settings["top"], "serve.top")
    about = describe(predictor, settings)
    predictor.predict(pd.DataFrame({"id": [0], "title": ["warm-up"]}), top=1)  # first-call costs paid now
    return LoadedModels(predictor, about, time.perf_counter() - start)


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
        the old models answer; if it fails they stay (the error says why). Models of another category tree
        than the ones answering are refused (TreeChanged) unless `new_tree`: the review desk then works in
        the new tree's store (decisions belong to the tree they were made under). One load at a time: a
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
    """Models of another tree replace the answering ones only when asked (`new_tree`): the reviewers'
    decisions and queue belong to the tree they were made under."""
    if current is None or new_tree:
        return
    old, new = current.predictor.tree, loaded.predictor.tree
    if old.fingerprint != new.fingerprint:
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
