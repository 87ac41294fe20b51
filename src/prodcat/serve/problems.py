"""Every failure a client can cause, as one application/problem+json answer (RFC 9457: type, title,
status, detail, and `errors`: [{field, message}] naming each offending field, e.g. `products[17].rating:
expected a number`). Never a traceback; product text never goes into a message or the log.

prodcat's errors map to status codes by kind: bad input (DataError, SettingsError) 422, a request the
models cannot answer as asked (UsageError) 400, models not loaded or not trained (NotTrainedError) 503.
"""
from __future__ import annotations

import json
import logging

from prodcat.errors import DataError, NotTrainedError, SettingsError, UsageError
from prodcat.review.db import Conflict, StoreError

PROBLEM_JSON = "application/problem+json"
TYPE = "urn:prodcat:problem:"  # + a short name: the `type` member of every problem
MAX_FIELD_ERRORS = 20  # field errors listed in one answer (the detail says how many there were)
log = logging.getLogger("prodcat.serve")

STATUS_OF_KIND = ((NotTrainedError, 503, "models not ready"), (UsageError, 400, "request not answerable"),
                  (StoreError, 503, "review store unavailable"), (Conflict, 409, "conflict"),
                  (SettingsError, 422, "invalid settings"), (DataError, 422, "invalid products"))

MESSAGES = {  # pydantic error type -> what the client reads
    "missing": "required", "extra_forbidden": "unknown field",
    "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number", "float_type": "expected a number",
    "float_parsing": "expected a number", "finite_number": "expected a finite number",
    "string_type": "expected text", "string_unicode": "not valid Unicode text", "bool_type": "expected true or false",
    "model_type": "expected an object", "model_attributes_type": "expected an object", "list_type": "expected a list",
    "dict_type": "expected an object",
    "request_shape": "expected a product object or {\"products\": [...]}",
    "not_json": "expected a JSON body (Content-Type: application/json)",
}
JSON_OR_FORM = ("application/json", "multipart/form-data")  # bodies that are read as such


class Problem(Exception):
    """An answer that is not a success: raised anywhere while answering, turned into problem+json."""

    def __init__(self, status: int, title: str, detail: str, errors: list[dict] | None = None,
                 kind: str = "invalid-request", headers: dict | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind
        self.errors, self.headers = errors or [], headers or {}

    def body(self) -> dict:
        return {"type": TYPE + self.kind, "title": self.title, "status": self.status, "detail": self.detail,
                "errors": self.errors[:MAX_FIELD_ERRORS]}

    def encoded(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False).encode()


def from_data_error(exc: DataError, item: str = "products") -> Problem:
    """A prodcat error as a problem; rows it names become fields of the request's items (`products[3].id`,
    or `product.id` for a single product)."""
    status, title = next((s, t) for kind, s, t in STATUS_OF_KIND if isinstance(exc, kind))
    errors = []
    if exc.column is not None:
        where = ([f"{item}[{row}].{exc.column}" for row in exc.rows] if item == "products" and exc.rows
                 else [f"{item}.{exc.column}"])
        errors = [{"field": field, "message": exc.problem or str(exc)} for field in where]
    detail = _summary(errors) if errors else str(exc)
    return Problem(status, title, detail, errors, kind=title.replace(" ", "-"))


def from_validation(errors: list[dict]) -> Problem:
    """pydantic's (or FastAPI's) errors of a request as one problem naming each field."""
    found = [{"field": field_name(e.get("loc", ())), "message": message(e)} for e in errors]
    malformed = any(e.get("type") == "json_invalid" for e in errors)
    title = "malformed JSON" if malformed else "invalid request"
    return Problem(400 if malformed else 422, title, _summary(found), found,
                   kind="malformed-json" if malformed else "invalid-request")


def _summary(errors: list[dict]) -> str:
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return shown + more


def field_name(loc) -> str:
    """('body', 'batch', 'products', 17, 'rating') -> 'products[17].rating'; a single product's fields are
    named `product.FIELD`; where the body is not JSON at all, 'body'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        kind = parts.pop(0)
        if kind == "body" and parts and isinstance(parts[0], int):
            return "body"  # malformed JSON: the position is in the message
        if kind == "body" and parts and parts[0] == "batch":
            parts.pop(0)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def message(error: dict) -> str:
    """A pydantic error in plain words (never the value sent: it may be product text)."""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "json_invalid":
        pos = (tuple(error.get("loc", ())) or ("",))[-1]
        at = f" at character {pos}" if isinstance(pos, int) else ""
        return f"malformed JSON{at}: {ctx.get('error', 'cannot be parsed')}"
    if kind == "string_too_long":
        return f"longer than {ctx.get('max_length')} characters (the service's serve.max_text_chars)"
    if kind == "too_long":
        return (f"more than {ctx.get('max_length')} products (the service's serve.max_batch_items): "
                "send them in several requests")
    if kind == "too_short":
        return "give at least one product"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below",
                 "less_than_equal": "at most"}[kind]
        return f"must be {bound} {next(iter(ctx.values()), '')}"
    if "UploadFile" in str(error.get("msg", "")):
        return "expected a file upload"
    return MESSAGES.get(kind, str(error.get("msg", "invalid")).removeprefix("Value error, "))


def status_phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def response(problem: Problem):
    """The problem as an HTTP response."""
    from starlette.responses import Response

    return Response(problem.encoded(), status_code=problem.status, media_type=PROBLEM_JSON,
                    headers=problem.headers)


def install_handlers(app) -> None:
    """Every exception that reaches FastAPI becomes a problem+json answer: request validation, HTTP errors
    (404, 405, ...), prodcat's errors by kind, and - for the service's own bugs only - a 500 without
    a traceback in the answer."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_problem(request, exc: Problem):
        return response(exc)

    async def on_validation(request, exc: RequestValidationError):
        errors = list(exc.errors())
        if request.headers.get("content-type", "").split(";")[0].strip() not in JSON_OR_FORM:
            errors = [e | {"type": "not_json"} if tuple(e.get("loc", ())) == ("body",) else e for e in errors]
        return response(from_validation(errors))

    async def on_http(request, exc: HTTPException):
        phrase = status_phrase(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        if detail == "There was an error parsing the body":  # FastAPI's words for a body it cannot decode
            detail = "the body cannot be read: send JSON as UTF-8 text (or multipart form data to /v1/predict/upload)"
        return response(Problem(exc.status_code, phrase, detail, kind=phrase.replace(" ", "-"),
                                headers=dict(exc.headers or {})))

    async def on_data_error(request, exc: DataError):
        return response(from_data_error(exc))

    async def on_anything(request, exc: Exception):
        log.error("%s %s failed: %s (a bug of the service)", request.method, request.url.path,
                  type(exc).__name__, exc_info=exc)
        return response(Problem(500, "internal error", "the service failed to answer; the failure is logged",
                                kind="internal-error"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(DataError, on_data_error)
    app.add_exception_handler(Exception, on_anything)


def document_problems(app) -> None:
    """The app's OpenAPI document says what every error answer is: application/problem+json (FastAPI
    files a `responses` model under application/json)."""
    from fastapi import FastAPI

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            for item in doc["paths"].values():
                for operation in item.values():
                    for status, answer in operation.get("responses", {}).items():
                        content = answer.get("content", {})
                        if not status.startswith("2") and "application/json" in content:
                            answer["content"] = {PROBLEM_JSON: content["application/json"]}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
