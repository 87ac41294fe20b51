"""The reviewer's page and its calls (prodcat.review.page renders, prodcat.review.store keeps):

    GET  /review                 sign-in form, or the signed-in reviewer's current product
    POST /review/sign-in         a reviewer key (form) -> a session cookie (HttpOnly, SameSite=Strict);
                                 too many wrong keys (per client address, overall) -> 429 with Retry-After
    POST /review/sign-out        the session ends on the server too (its id is recorded in the review store:
                                 every worker and replica refuses the old cookie)
    POST /review/decide          {product_id, category_id, action, idempotency_key, excluded} -> the next
                                 product's HTML; a group's lead decides its members too, but the `excluded`
                                 ones (their product ids: queued alone again; not a member: 422)
    POST /review/undo            {idempotency_key} -> the undone product again
    GET  /review/photo/{id}      a queued product's photo

The decision is committed to the store before the answer is sent; the page moves on only on that answer.
JSON bodies and a SameSite=Strict cookie: another site's form cannot post a decision.
(No `from __future__ import annotations`: FastAPI reads these annotations at run time.)
"""
from typing import Annotated, Literal, Optional

import anyio
from fastapi import APIRouter, Cookie, Form, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from prodcat.errors import DataError
from prodcat.review import page
from prodcat.review.groups import MAX_MEMBERS
from prodcat.serve.desk import SESSION_S
from prodcat.serve.problems import Problem, from_data_error
from prodcat.serve.schemas import INT64

COOKIE = "prodcat_reviewer"


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: int = Field(ge=INT64[0], le=INT64[1])
    category_id: Optional[int] = Field(None, ge=INT64[0], le=INT64[1], description="the chosen leaf (null for skip)")
    action: Literal["accept", "correct", "skip"]
    idempotency_key: str = Field(min_length=8, max_length=200)
    excluded: list[Annotated[int, Field(ge=INT64[0], le=INT64[1])]] = Field(
        [], max_length=MAX_MEMBERS, description="members of the lead's group left out: each is decided alone later")


class Undo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idempotency_key: str = Field(min_length=8, max_length=200)


class Shown(BaseModel):
    item_html: str
    counters_html: str


NO_PAGE = "this service has no review page (set review.reviewers_file)"


async def in_thread(work):
    """Run store work in a worker thread; the store's refusals as problems (409 conflict, 503 store or models
    unavailable, 422 a bad decision: prodcat.serve.problems)."""
    try:
        return await anyio.to_thread.run_sync(work)
    except DataError as exc:
        raise from_data_error(exc, "decision") from None


class Desk:
    """What the page's routes share: the service's review desk and its models' tree."""

    def __init__(self, service):
        self.service, self.desk = service, service.desk

    def tree(self):
        """The tree the service answers under (`serve.tree`, else the models'): its store, its leaves."""
        return self.service.holder.require().tree

    def enabled(self) -> None:
        if not self.desk.enabled:
            raise Problem(404, "not found", NO_PAGE)

    async def reviewer_of(self, token: Optional[str]) -> Optional[str]:
        """The reviewer of a valid session cookie that was not signed out, else None."""
        session = self.desk.parse(token)
        if session is None:
            return None
        ended = await in_thread(lambda: self.desk.store(self.tree()).session_ended(session.session_id))
        return None if ended else session.reviewer

    async def signed_in(self, token: Optional[str]) -> str:
        """The reviewer of the session's cookie (else 401)."""
        self.enabled()
        name = await self.reviewer_of(token)
        if name is None:
            raise Problem(401, "unauthorized", "sign in at /review with your reviewer key", kind="unauthorized")
        return name

    def shown(self, name: str) -> dict:
        """The reviewer's next product (their own claim first) and the counters, rendered."""
        tree = self.tree()
        store = self.desk.store(tree)
        item = store.claim_next(name, self.desk.settings["claim_ttl_s"])
        photo = (f"/review/photo/{int(item['product_id'])}" if item and item["snapshot"].get("image_path")
                 else None)
        return {"item_html": page.item_html(item, tree.shown_path, photo),
                "counters_html": page.counters_html(store.counters())}


def add_review(router: APIRouter, service) -> None:
    """The page's routes (a service without reviewers answers them 404)."""
    desk = Desk(service)
    add_page(router, desk)
    add_calls(router, desk)


def add_page(router: APIRouter, desk: Desk) -> None:
    @router.get("/review", response_class=HTMLResponse, include_in_schema=False)
    async def review(prodcat_reviewer: Annotated[Optional[str], Cookie()] = None):
        desk.enabled()
        name = await desk.reviewer_of(prodcat_reviewer)
        if name is None:
            return HTMLResponse(page.sign_in())
        now = await in_thread(lambda: desk.shown(name))
        return HTMLResponse(page.review_page(name, now["item_html"], now["counters_html"],
                                            desk.desk.settings["dwell_ms"]))

    @router.post("/review/sign-in", include_in_schema=False)
    async def sign_in(request: Request, key: Annotated[str, Form(max_length=500)] = ""):
        desk.enabled()
        client = request.client.host if request.client else "unknown"
        blocked = desk.desk.throttle.blocked(client)  # no await from here to failed(): parallel tries count
        if blocked is not None:
            if "text/html" in request.headers.get("accept", ""):  # the browser's form: the page says it
                said = blocked.detail[:1].upper() + blocked.detail[1:] + "."
                return HTMLResponse(page.sign_in(said), status_code=429,
                                    headers={"Retry-After": str(blocked.retry_after)})
            raise blocked.problem()
        name = desk.desk.reviewer(key)
        if name is None:
            desk.desk.throttle.failed(client)
            await anyio.sleep(0.5)  # a wrong key costs the guesser time
            return HTMLResponse(page.sign_in("That key is not a reviewer's key."), status_code=401)
        answer = RedirectResponse("/review", status_code=303)
        answer.set_cookie(COOKIE, desk.desk.session(name), httponly=True, samesite="strict", path="/review",
                          max_age=SESSION_S, secure=request.url.scheme == "https")
        return answer

    @router.post("/review/sign-out", include_in_schema=False)
    async def sign_out(prodcat_reviewer: Annotated[Optional[str], Cookie()] = None):
        desk.enabled()
        session = desk.desk.parse(prodcat_reviewer)
        if session is not None:  # recorded before the answer: a store that cannot take it is a 503, cookie kept
            await in_thread(lambda: desk.desk.store(desk.tree()).end_session(
                session.session_id, session.reviewer, session.expiry))
        answer = RedirectResponse("/review", status_code=303)
        answer.delete_cookie(COOKIE, path="/review")
        return answer


def add_calls(router: APIRouter, desk: Desk) -> None:
    @router.post("/review/decide", response_model=Shown, include_in_schema=False)
    async def decide(body: Decision, prodcat_reviewer: Annotated[Optional[str], Cookie()] = None):
        name = await desk.signed_in(prodcat_reviewer)

        def work():
            desk.desk.store(desk.tree()).decide(body.product_id, body.category_id, body.action, name,
                                                body.idempotency_key, body.excluded)
            return desk.shown(name)

        return await in_thread(work)

    @router.post("/review/undo", response_model=Shown, include_in_schema=False)
    async def undo(body: Undo, prodcat_reviewer: Annotated[Optional[str], Cookie()] = None):
        name = await desk.signed_in(prodcat_reviewer)

        def work():
            desk.desk.store(desk.tree()).undo(name, body.idempotency_key, desk.desk.settings["claim_ttl_s"])
            return desk.shown(name)

        return await in_thread(work)

    @router.get("/review/photo/{product_id}", include_in_schema=False)
    async def photo(product_id: Annotated[int, Path(ge=INT64[0], le=INT64[1])],
                    prodcat_reviewer: Annotated[Optional[str], Cookie()] = None):
        await desk.signed_in(prodcat_reviewer)
        path = await in_thread(lambda: desk.desk.photo(product_id, desk.tree()))
        if path is None:
            raise Problem(404, "not found", f"product {product_id} has no photo in the review queue")
        return FileResponse(path)
