"""The FastAPI application: `create_app(models_dir, settings)` (settings: the `serve` section of the
declared settings, checked like a config file), and `app_from_env` - the factory each uvicorn worker calls
(`./run.sh serve` hands it the models folder and the settings in the environment).

Life cycle: at start-up the models load in a background thread (live at once, ready when loaded); with
several workers each worker finishes loading before it takes requests, so that uvicorn's rolling restart
(SIGHUP to the supervisor) brings in only workers that can answer. Reloads in place: a single process on
SIGHUP (`serve.reload_on_sighup`), each worker of several on SIGUSR1 (POST /v1/reload sends it to every
worker). Shutdown is uvicorn's: in-flight requests finish.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

import prodcat
from prodcat.errors import SettingsError
from prodcat.review_rule import ReviewRule
from prodcat.serve.desk import ReviewDesk
from prodcat.serve.limits import BodySizeLimit
from prodcat.serve.loading import ModelHolder, load_models
from prodcat.serve.observe import Metrics, RequestLog
from prodcat.serve.problems import document_problems, install_handlers
from prodcat.serve.routes import build_router
from prodcat.serve.schemas import request_models
from prodcat.serve.security import SecurityHeaders, configured_key
from prodcat.serve.workers import worker_file
from prodcat.settings import ReviewSettings, ServeSettings, check, complete

MODELS_ENV = "PRODCAT_SERVE_MODELS"  # what ./run.sh serve hands each worker
SETTINGS_ENV = "PRODCAT_SERVE_SETTINGS"
REVIEW_ENV = "PRODCAT_SERVE_REVIEW"  # the review settings (the reviewers' page)
SUPERVISOR_ENV = "PRODCAT_SERVE_SUPERVISOR"  # the pid of uvicorn's supervisor of several workers


def serve_settings(settings: dict | None) -> dict:
    """The `serve` settings, checked like a config file's section and completed with the declared defaults."""
    checked = check(ServeSettings, dict(settings or {}), "serve settings", "serve")
    completed = complete(ServeSettings, checked)
    ReviewRule(completed["threshold"], completed["min_precision"], ("serve.threshold", "serve.min_precision"),
               SettingsError)  # the service's review rule, checked at start
    return completed


def review_settings(review: dict | None) -> dict:
    """The `review` settings, checked and completed like the `serve` ones."""
    return complete(ReviewSettings, check(ReviewSettings, dict(review or {}), "review settings", "review"))


class Service:
    """What the endpoints share: the settings, the models and their loading, the metrics, the request
    models, the API key and the prediction slots."""

    def __init__(self, models_dir: Path, settings: dict, loader=load_models, review: dict | None = None):
        self.settings = serve_settings(settings)
        review = review_settings(review)
        self.settings["zero_shot"] = review["zero_shot"]  # the suggestions of the empty leaves (Predictor.load)
        self.desk = ReviewDesk(models_dir, review)
        self.api_key = configured_key(self.settings)
        self.metrics = Metrics()
        self.holder = ModelHolder(models_dir, self.settings, loader, on_outcome=self.count_reload)
        self.requests = request_models(self.settings["max_text_chars"], self.settings["max_batch_items"])
        self.predicting = threading.BoundedSemaphore(self.settings["predict_threads"])  # prediction slots
        self.supervised = str(os.getppid()) == os.environ.get(SUPERVISOR_ENV)  # a worker of several

    def count_reload(self, outcome: str) -> None:
        self.metrics.loads.labels(outcome).inc()

    @asynccontextmanager
    async def lifespan(self, app: FastAPI):
        # one process: SIGHUP reloads in place; a worker of several: SIGUSR1 (POST /v1/reload tells every
        # registered worker), while SIGHUP to uvicorn's supervisor stays its rolling restart of the workers.
        # The handler comes first: a worker still loading must not die of a reload signal.
        reload_signal = getattr(signal, "SIGUSR1" if self.supervised else "SIGHUP", None)
        restore = self.reload_on(reload_signal) if self.settings["reload_on_sighup"] or self.supervised else None
        registered = worker_file() if self.supervised else None
        loading = self.holder.start()
        if self.settings["workers"] > 1:  # take no request before the models are in (rolling restarts)
            await anyio.to_thread.run_sync(loading.join)
            if self.holder.current is None:
                raise RuntimeError(f"the models did not load: {self.holder.failure}")
        if registered is not None:
            registered.touch()
        try:
            yield
        finally:
            if registered is not None:
                registered.unlink(missing_ok=True)
            if restore is not None and not self.supervised:  # a draining worker keeps ignoring reloads
                signal.signal(reload_signal, restore)

    def reload_on(self, signum):
        """The signal reloads the models in the background (where signals can be set: the main thread);
        returns the handler it replaced."""
        if threading.current_thread() is not threading.main_thread() or signum is None:
            return None
        return signal.signal(signum, lambda *_: self.holder.reload_in_background())


def create_app(models_dir: str | Path, settings: dict | None = None, loader=load_models,
               review: dict | None = None) -> FastAPI:
    """The service of the models under `models_dir` with the `serve` settings (defaults where absent);
    `loader`: how a models folder is loaded (tests slow it down); `review`: the review settings (its
    reviewers file opens the /review page)."""
    service = Service(Path(models_dir), settings, loader, review)
    app = FastAPI(title="prodcat", version=prodcat.__version__, lifespan=service.lifespan,
                  description="Categorises marketplace products into the leaves of a category tree with the "
                              "saved prodcat models. Every error is application/problem+json (RFC 9457).")
    app.state.service = service
    install_handlers(app)
    document_problems(app)
    app.include_router(build_router(service))
    app.add_middleware(BodySizeLimit, max_bytes=service.settings["max_body_bytes"])
    app.add_middleware(SecurityHeaders)  # CSP (a nonce per page), nosniff, referrer, no framing; 413s too
    app.add_middleware(RequestLog, metrics=service.metrics)  # outermost: logs and counts every answer
    return app


def app_from_env() -> FastAPI:
    """The application of one uvicorn worker, from what `./run.sh serve` put in the environment."""
    return create_app(os.environ[MODELS_ENV], json.loads(os.environ.get(SETTINGS_ENV, "{}")),
                      review=json.loads(os.environ.get(REVIEW_ENV, "{}")))
