"""Stored outputs: where a dataset's generated files live, atomic writes (a crash never leaves a
half-written output behind) and reading the stored OOF probabilities back."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MODEL_ORDER = ("fasttext", "tfidf", "image", "coca")  # registry order, for listing finished models
STACK = "stack"  # the stacker's outputs: oof/<dataset>/stack/, models/<dataset>/stack/
TRAIN_IDS = "train_ids.npz"  # beside the saved models: the ids of the products they were trained on


@dataclass(frozen=True)
class Paths:
    """Where a dataset's generated outputs live; different datasets never share a folder."""

    workdir: Path
    dataset: str

    def _dir(self, kind: str, *parts: str) -> Path:
        return self.workdir.joinpath(kind, self.dataset, *parts)

    @property
    def folds(self) -> Path:
        return self._dir("folds") / "folds.parquet"

    @property
    def oof_root(self) -> Path:
        return self._dir("oof")

    def oof(self, model: str) -> Path:
        return self._dir("oof", model)

    def models(self, model: str) -> Path:
        return self._dir("models", model)

    @property
    def models_root(self) -> Path:
        """Every saved model of the dataset (and its category tree): what `predict` loads."""
        return self._dir("models")

    @property
    def cache(self) -> Path:
        return self._dir("cache")

    @property
    def submissions(self) -> Path:
        return self._dir("submissions")

    @property
    def reports(self) -> Path:
        return self._dir("reports")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # the mode of a normal new file, not mkstemp's private 0600
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def clean_stale_temps(*folders: Path) -> int:
    """Remove the temp files that killed processes left in these folders (their pid, written in the name by
    atomic_path, is gone); a live process's temp files are kept. Returns how many were removed."""
    import re

    removed = 0
    for folder in folders:
        for tmp in Path(folder).rglob(".*.pid*.tmp") if Path(folder).is_dir() else []:
            m = re.search(r"\.pid(\d+)\.", tmp.name)
            if m and not _alive(int(m.group(1))):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str), encoding="utf-8")


def write_npz(arrays: dict[str, np.ndarray], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_oof(run, name: str):
    """The stored OOF TopK of a model, in the training rows' order."""
    from prodcat.probs import TopK

    return TopK.load(run.paths.oof(name) / "oof.npz").align(run.ds.train["id"].to_numpy())


def finished_models(run) -> list[str]:
    """Models whose OOF probabilities are complete for this dataset's training rows, in registry order."""
    names = []
    root = run.paths.oof_root
    if not root.exists():
        return names
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = d / "complete.json"
        if meta.exists() and json.loads(meta.read_text()).get("data") == run.ds.fingerprint:
            names.append(d.name)
    order = list(MODEL_ORDER)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def base_models(run) -> list[str]:
    """Finished base models (the stacker's own output is not a base model)."""
    return [m for m in finished_models(run) if m != STACK]


@contextmanager
def locked(paths: "Paths", name: str, echo=print):
    """Hold the lock `name` of a dataset's outputs (filelock, under <workdir>/locks/<dataset>/): a second
    process that would write the same outputs waits, told who holds them; readers never lock. The lock is
    the kernel's (flock), so a killed holder never leaves it taken."""
    import socket
    import sys
    import time

    from filelock import FileLock, Timeout

    folder = paths.workdir / "locks" / paths.dataset
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{name}.lock"))
    holder = folder / f"{name}.holder.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = json.loads(holder.read_text())
            who = f"process {who['pid']} on {who['host']} ({who['command']}, since {who['since']})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        echo(f"[lock] {paths.dataset}/{name} is being written by {who}: waiting for it to finish")
        lock.acquire()
    try:
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "command": " ".join(sys.argv[1:4]) or "python",
                                      "since": time.strftime("%H:%M:%S")}))
        yield
    finally:
        lock.release()
