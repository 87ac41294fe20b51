"""`./run.sh serve`: uvicorn runs the service. Each worker process builds the application from an import
string and the environment (`prodcat.serve.app:app_from_env`) and loads its own copy of the models, read
only. With several workers uvicorn's supervisor replaces them one by one on SIGHUP (a reload: each new
worker loads the models before it takes requests), and their Prometheus counts are summed through a
temporary folder removed at exit. SIGTERM / Ctrl-C: uvicorn stops taking requests and lets the ones in
flight finish (at most `serve.graceful_shutdown_s`). A client gets `serve.client_timeout_s` to send a whole
request, head and body; a slower one is answered 408 and closed (prodcat.serve.timeouts)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from prodcat.serve.app import MODELS_ENV, REVIEW_ENV, SETTINGS_ENV, SUPERVISOR_ENV, review_settings, serve_settings
from prodcat.serve.timeouts import CLIENT_TIMEOUT_ENV, PROTOCOL
from prodcat.serve.workers import WORKERS_ENV

APP = "prodcat.serve.app:app_from_env"
WORKER_READY_S = 600  # how long a (re)started worker may take to load the models before uvicorn gives up on it


def log_config() -> dict:
    """uvicorn's logging, plus the service's own logger (one line per request) with timestamps."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["prodcat"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["prodcat"] = {"class": "logging.StreamHandler", "formatter": "prodcat",
                                     "stream": "ext://sys.stderr"}
    config["loggers"]["prodcat"] = {"handlers": ["prodcat"], "level": "INFO", "propagate": False}
    return config


def run_server(models_dir: Path, settings: dict, echo=print, review: dict | None = None) -> None:
    """Serve the models under `models_dir` until stopped (`review`: the review settings)."""
    import uvicorn

    settings = serve_settings(settings)
    os.environ[MODELS_ENV] = str(Path(models_dir).resolve())
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    os.environ[REVIEW_ENV] = json.dumps(review_settings(review))
    os.environ[CLIENT_TIMEOUT_ENV] = str(settings["client_timeout_s"])  # slow clients are shed (serve.timeouts)
    metrics_dir = None
    if settings["workers"] > 1:
        metrics_dir = tempfile.mkdtemp(prefix="prodcat-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        os.environ[WORKERS_ENV] = os.path.join(metrics_dir, "workers")  # each worker registers its pid here
        os.makedirs(os.environ[WORKERS_ENV])
    echo(f"[serve] {models_dir} on http://{settings['host']}:{settings['port']} ({settings['workers']} worker(s), "
         f"{settings['use']} models); docs at /docs, OpenAPI at /openapi.json")
    try:
        uvicorn.run(APP, factory=True, host=settings["host"], port=settings["port"], workers=settings["workers"],
                    http=PROTOCOL, access_log=False, log_config=log_config(),
                    timeout_worker_healthcheck=WORKER_READY_S,
                    timeout_graceful_shutdown=settings["graceful_shutdown_s"])
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
