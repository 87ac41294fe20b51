"""The endpoints. Each answers with a typed body (prodcat.serve.schemas) or a problem (prodcat.serve.problems).

    POST /v1/predict          one product, or {"products": [...], "top", "threshold", "min_precision"}
    POST /v1/predict/upload   one product (a JSON form field) and its photo as a multipart upload
    GET  /v1/info             the models, their version, data fingerprint, OOF scores, review rule
    GET  /v1/categories       the category tree; ?q= searches the leaves' title paths
    POST /v1/reload           load the models folder again and swap it in (API key)
    GET  /health/live, /health/ready, /metrics

(No `from __future__ import annotations`: FastAPI reads these annotations at run time, some of them are the
service's own request models.)
"""
from functools import partial
from typing import Annotated, Optional

import anyio
from fastapi import APIRouter, Body, File, Form, Query, Request, Response, Security, UploadFile
from fastapi.security import APIKeyHeader
from pydantic import ValidationError

from prodcat.errors import DataError
from prodcat.serve import schemas
from prodcat.serve.answers import answer, ask_of, product_frame
from prodcat.serve.desk import apply_decisions
from prodcat.serve.loading import ReloadRunning, TreeChanged
from prodcat.serve.photos import PhotoFiles
from prodcat.serve.problems import Problem, from_data_error, from_validation
from prodcat.serve.review_routes import add_review
from prodcat.serve.security import API_KEY_HEADER, check_key
from prodcat.serve.workers import signal_workers

QUERY_CHARS = 200  # characters of a category search at most


def problems(*statuses: int) -> dict:
    """OpenAPI entries of the problem answers an endpoint may give."""
    return {s: {"model": schemas.Problem} for s in statuses}  # as problem+json: problems.document_problems


def build_router(service) -> APIRouter:
    """Every endpoint of `service` (prodcat.serve.app.Service)."""
    router = APIRouter()
    add_health(router, service)
    add_predict(router, service)
    add_upload(router, service)
    add_info(router, service)
    add_reload(router, service)
    add_review(router, service)
    return router


def add_health(router: APIRouter, service) -> None:
    @router.get("/health/live", response_model=schemas.Health, tags=["health"])
    def live():
        """The process answers (models loaded or not)."""
        return {"status": "alive"}

    @router.get("/health/ready", response_model=schemas.Health, responses=problems(503), tags=["health"])
    def ready():
        """200 once the models are loaded; 503 (problem) while they load or when loading failed."""
        return {"status": "ready", "model_version": service.holder.require().version}

    @router.get("/metrics", include_in_schema=False)
    def metrics():
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)


async def respond(service, request: Request, products: list, ask_args: dict, item: str,
                  uploaded: Optional[bytes] = None, queue: bool = False) -> dict:
    """Predict a request's products in a worker thread with the models that answer when it starts; count
    them in the log line and the metrics. `queue`: the flagged ones go to the review queue."""
    models = service.holder.require()
    request.state.items = len(products)
    body, flagged = await anyio.to_thread.run_sync(
        partial(predict_now, service, models, products, ask_args, item, uploaded, queue))
    service.metrics.predicted(len(products), flagged)
    return body


def predict_now(service, models, products: list, ask_args: dict, item: str, uploaded: Optional[bytes],
                queue: bool = False):
    """(response body, products flagged), once one of the `serve.predict_threads` prediction slots is
    free: photos checked into temporary files (removed at the end), the products checked by
    `validate_products`, predicted; with a review desk, products people already decided are answered
    with the decision, the others are predicted with what people decided in the models' memory, and
    (`queue`) the flagged ones are queued for review."""
    desk = service.desk
    with PhotoFiles(service.settings["max_photo_pixels"]) as photos:
        try:
            ask = ask_of(service.settings, **ask_args)
            frame = product_frame(products, photos, item, None if uploaded is None else photos.add(uploaded))
            keep = desk.settings["suggestions"] if queue else 0  # what the review queue keeps of each product
            if desk.enabled:
                desk.teach(models.predictor, models.tree)  # what people decided since: the models' memory
            with service.predicting:
                body, table = answer(models, frame, ask, keep)
            if desk.enabled:  # the store's work outside the prediction slots
                tree = models.tree  # the tree the service answers under (serve.tree, else the models')
                apply_decisions(body, desk.decided(frame, tree), tree)
                if queue:
                    desk.queue(table, frame, models.version, tree)
        except DataError as exc:
            raise from_data_error(exc, item) from None
    return body, sum(p["needs_review"] for p in body["predictions"])


def add_predict(router: APIRouter, service) -> None:
    requests = service.requests

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the service's API key")

    @router.post("/v1/predict", response_model=schemas.PredictResponse,
                 responses=problems(400, 401, 403, 413, 422, 503), tags=["predict"])
    async def predict(request: Request, body: Annotated[requests.body, Body()],
                      api_key: Annotated[Optional[str], Security(key_header)] = None):
        """Categorise one product, or a batch `{"products": [...]}` (with `top`, `threshold` or
        `min_precision` for the whole batch; a single product gets the service's defaults). A batch with
        `"review": true` also queues its flagged products for the review page (API key)."""
        if isinstance(body, requests.batch):
            if body.review:
                check_key(service.api_key, api_key)
                if not service.desk.enabled:
                    raise Problem(422, "invalid request", "review: this service has no review page (set "
                                  "review.reviewers_file)", [{"field": "review", "message": "no review page"}])
            options = {"top": body.top, "threshold": body.threshold, "min_precision": body.min_precision}
            return await respond(service, request, body.products, options, "products", queue=body.review)
        return await respond(service, request, [body], {}, "product")


def add_upload(router: APIRouter, service) -> None:
    @router.post("/v1/predict/upload", response_model=schemas.PredictResponse,
                 responses=problems(400, 413, 422, 503), tags=["predict"])
    async def predict_upload(
            request: Request,
            product: Annotated[str, Form(description="the product as a JSON object (no `photo` field)")],
            photo: Annotated[Optional[UploadFile], File(description="its photo")] = None,
            top: Annotated[Optional[int], Form(ge=1)] = None,
            threshold: Annotated[Optional[float], Form(ge=0, le=1)] = None,
            min_precision: Annotated[Optional[float], Form(gt=0, lt=1)] = None):
        """Categorise one product with its photo sent as a multipart upload."""
        try:
            item = service.requests.product.model_validate_json(product)
        except ValidationError as exc:
            raise from_validation([e | {"loc": ("product", *e["loc"])} for e in exc.errors()]) from None
        if item.photo is not None and photo is not None:
            raise Problem(422, "invalid request", "product.photo: give the photo as the upload or in the product, "
                          "not both", [{"field": "product.photo", "message": "given twice"}])
        data = await photo.read() if photo is not None else None
        options = {"top": top, "threshold": threshold, "min_precision": min_precision}
        return await respond(service, request, [item], options, "product", data)


def add_info(router: APIRouter, service) -> None:
    @router.get("/v1/info", response_model=schemas.Info, responses=problems(503), tags=["models"])
    def info():
        """The models that answer: version, training-data fingerprint, OOF scores, the review rule and its
        expected coverage, the request limits, and the state of reloads."""
        models, holder = service.holder.require(), service.holder
        outcome, when = holder.last_reload or (None, None)
        limits = {k: service.settings[k] for k in ("max_batch_items", "max_body_bytes", "max_text_chars",
                                                   "max_photo_pixels")}
        return models.about | {"limits": limits, "loaded_at": models.loaded_at, "load_seconds": models.load_seconds,
                               "reload": {"state": "reloading" if holder.reloading else "idle",
                                          "last_outcome": outcome, "last_at": when}}

    @router.get("/v1/categories", response_model=schemas.Categories, responses=problems(422, 503),
                tags=["models"])
    def categories(
            q: Annotated[Optional[str], Query(max_length=QUERY_CHARS, description=(
                "words that must all appear in a leaf's title path (case-insensitive); absent: the whole "
                "tree"))] = None,
            limit: Annotated[Optional[int], Query(ge=1, le=service.settings["max_category_results"], description=(
                "leaves returned at most by a search (default: serve.max_category_results)"))] = None):
        """The category tree the service answers under (every category with its parent; `serve.tree` when
        set), or the leaves whose title path holds every word of `q`, by path."""
        models = service.holder.require()
        if q is None:
            return {"total": len(models.categories), "categories": models.categories}
        words = q.casefold().split()
        found = [row for row in models.leaf_paths if all(w in row[2] for w in words)]
        shown = found[:limit or service.settings["max_category_results"]]
        parent = models.tree.parent
        return {"total": len(found), "categories": [{"id": leaf, "title": models.tree.titles.get(leaf, ""),
                                                     "parent_id": parent[leaf], "is_leaf": True, "path": path}
                                                    for leaf, path, _ in shown]}


def add_reload(router: APIRouter, service) -> None:
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the service's API key")

    @router.post("/v1/reload", response_model=schemas.Reloaded, responses=problems(401, 403, 409, 422, 503),
                 tags=["models"])
    async def reload(response: Response, api_key: Annotated[Optional[str], Security(key_header)] = None,
                     new_tree: Annotated[bool, Query(description="accept models of another category tree: the "
                                                     "review desk starts that tree's store")] = False):
        """Load the models folder again (e.g. retrained) and swap it in: the old models answer until the new
        ones are loaded; a failed load keeps them and says why. The `serve.tree` file is read again (an edited
        one answers at once; a bad one fails the reload). Models of another category tree are refused (409)
        unless `new_tree=true` (or, with `serve.tree`, unless that file changed). With several workers, the
        workers are told to reload in place, each in the background (their outcome is in the log and the
        metrics; another tree is refused there: restart the service to change trees)."""
        check_key(service.api_key, api_key)
        if service.supervised:
            signal_workers()  # every worker, this one too
            response.status_code = 202
            return {"status": "reloading workers", "model_version": None, "previous_version": None,
                    "load_seconds": None}
        try:
            loaded, previous = await anyio.to_thread.run_sync(service.holder.load, new_tree)
        except ReloadRunning as exc:
            raise Problem(409, "reload already running", str(exc), kind="reload-running") from None
        except TreeChanged as exc:
            raise Problem(409, "reload refused: the models answering keep answering", str(exc),
                          kind="tree-changed") from None
        except Exception as exc:  # noqa: BLE001 - the models folder's failure, named; the old models stay
            raise reload_failed(exc) from None
        return {"status": "reloaded", "model_version": loaded.version,
                "previous_version": previous.version if previous else None, "load_seconds": loaded.load_seconds}


def reload_failed(exc: Exception) -> Problem:
    """Why a reload failed, as a problem (the models folder's fault, not the request's: 503 unless the error
    says otherwise)."""
    problem = (from_data_error(exc) if isinstance(exc, DataError)
               else Problem(503, "", f"{type(exc).__name__}: {exc}", kind="reload-failed"))
    problem.title = "reload failed: the previous models keep answering"
    problem.detail = str(exc) if isinstance(exc, DataError) else problem.detail
    return problem
