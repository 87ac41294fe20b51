"""Atomic writes (a crash never leaves a half-written file behind), the cleanup of what killed writers left,
and the outputs' locks: the storage layer every other module writes through."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


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


@contextmanager
def scratch_file(folder: str | Path, name: str):
    """Yield the path of a temporary working file in `folder` (e.g. fastText's training text), removed when
    the block ends; named as atomic_path's temp files, so a killed process's one is found by
    clean_stale_temps."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.pid{os.getpid()}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def clean_stale_temps(*folders: Path) -> int:
    """Remove the temp files that killed processes left in these folders (their pid, written in the name by
    atomic_path and scratch_file, is gone); a live process's temp files are kept. Returns how many were removed."""
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


@contextmanager
def locked(paths, name: str, echo=print):
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
