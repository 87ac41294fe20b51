"""The workers of one `./run.sh serve --workers N`: each registers its pid in a folder the command makes
(WORKERS_ENV), so that POST /v1/reload can tell every worker - and only the workers - to reload in place."""
from __future__ import annotations

import os
import signal
from pathlib import Path

WORKERS_ENV = "PRODCAT_SERVE_WORKERS"  # a folder where each worker of several registers its pid


def worker_file() -> Path | None:
    """This worker's entry in the folder of workers (None: not run by ./run.sh serve with several)."""
    folder = os.environ.get(WORKERS_ENV)
    return Path(folder) / str(os.getpid()) if folder else None


def signal_workers() -> int:
    """SIGUSR1 to every registered worker (each reloads its models in place); how many were told."""
    folder = os.environ.get(WORKERS_ENV)
    told = 0
    for entry in Path(folder).iterdir() if folder else []:
        try:
            os.kill(int(entry.name), signal.SIGUSR1)
            told += 1
        except (ValueError, ProcessLookupError, PermissionError):
            entry.unlink(missing_ok=True)  # a worker that is gone
    return told
