"""The API key of the write endpoints (POST /v1/reload; more to come): the PRODCAT_API_KEY environment
variable, else the first line of the file `serve.api_key_file`; sent in the X-API-Key header and compared in
constant time. No key configured: the write endpoints answer 403 (they are off), never open.

And the throttle of the reviewers' sign-in (POST /review/sign-in): wrong keys are counted per client address
and overall over a sliding window; past either limit every further attempt - a right key too - is answered
429 with Retry-After until enough failures have aged out of the window. Counted in each process: with W
uvicorn workers a client gets at most W times the limits."""
from __future__ import annotations

import hmac
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from prodcat.errors import SettingsError
from prodcat.review.page import PAGE_NONCE
from prodcat.serve.problems import Problem

API_KEY_ENV = "PRODCAT_API_KEY"
API_KEY_HEADER = "X-API-Key"
SIGN_IN_WINDOW_S = 300  # wrong reviewer keys are counted over this many seconds (a sliding window) ...
SIGN_IN_FAILURES_PER_CLIENT = 5  # ... at most this many from one client address ...
SIGN_IN_FAILURES_OVERALL = 50  # ... and this many from all addresses together (many-address guessing)


def configured_key(settings: dict) -> str | None:
    """The key the write endpoints ask for (None: none configured)."""
    key = os.environ.get(API_KEY_ENV)
    if key is None and settings["api_key_file"]:
        path = Path(settings["api_key_file"])
        try:
            key = path.read_text().splitlines()[0] if path.stat().st_size else ""
        except OSError as exc:
            raise SettingsError(f"serve.api_key_file: {path.resolve()}: {exc.strerror or exc}") from None
    if key is not None and not key.strip():
        raise SettingsError(f"the API key ({API_KEY_ENV} or serve.api_key_file) is empty: give a key, or none")
    return None if key is None else key.strip()


def check_key(expected: str | None, given: str | None) -> None:
    """Nothing when `given` is the key; else a 401 (no key sent) or 403 (wrong key, or none configured)."""
    if expected is None:
        raise Problem(403, "forbidden", f"write endpoints are off: this service has no API key ({API_KEY_ENV} "
                      "or serve.api_key_file)", kind="forbidden")
    if not given:
        raise Problem(401, "unauthorized", f"send the API key in the {API_KEY_HEADER} header",
                      kind="unauthorized", headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(403, "forbidden", "wrong API key", kind="forbidden")


@dataclass(frozen=True)
class Blocked:
    """A refused sign-in attempt: whole seconds until one is taken again, and why."""
    retry_after: int
    detail: str

    def problem(self) -> Problem:
        return Problem(429, "too many requests", self.detail, kind="too-many-requests",
                       headers={"Retry-After": str(self.retry_after)})


class SignInThrottle:
    """Wrong keys per client address and overall over the last `window_s` seconds (this process's count).
    `blocked(client)` then `failed(client)` with no await between them: parallel attempts are counted one by
    one, so a burst gets exactly the allowed failures and then 429s."""

    def __init__(self, per_client: int = SIGN_IN_FAILURES_PER_CLIENT, overall: int = SIGN_IN_FAILURES_OVERALL,
                 window_s: float = SIGN_IN_WINDOW_S, clock=time.monotonic):
        self.per_client, self.overall, self.window_s, self.clock = int(per_client), int(overall), window_s, clock
        self._failures: deque[tuple[float, str]] = deque()  # (when, client), oldest first
        self._by_client: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _forget(self, now: float) -> None:
        """Drop the failures that left the window (memory stays bounded by the overall limit)."""
        while self._failures and self._failures[0][0] <= now - self.window_s:
            _, client = self._failures.popleft()
            mine = self._by_client[client]
            mine.popleft()
            if not mine:
                del self._by_client[client]

    def blocked(self, client: str) -> Blocked | None:
        """Why `client` may not try a key now (None: it may)."""
        with self._lock:
            now = self.clock()
            self._forget(now)
            mine = self._by_client.get(client, ())
            waits = []
            if len(mine) >= self.per_client:
                waits.append((mine[-self.per_client] + self.window_s - now,
                              f"{len(mine)} wrong reviewer keys from this address"))
            if len(self._failures) >= self.overall:
                waits.append((self._failures[-self.overall][0] + self.window_s - now,
                              f"{len(self._failures)} wrong reviewer keys from all addresses"))
        if not waits:
            return None
        wait, why = max(waits)
        seconds = max(1, math.ceil(wait))
        at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + seconds))
        return Blocked(seconds, f"sign-in refused: {why} in the last {self.window_s:g} s; try again in "
                                f"{seconds} s (after {at})")

    def failed(self, client: str) -> None:
        """Count a wrong key from `client`."""
        with self._lock:
            now = self.clock()
            self._failures.append((now, client))
            self._by_client.setdefault(client, deque()).append(now)


# -- response headers ------------------------------------------------------------------------------------
# Every answer says nosniff, no-referrer and that no other site may frame it; the reviewer's page (/review
# and below) also gets a Content-Security-Policy under which only its own <script> and <style> run: they
# carry this response's nonce (fresh per response), and no inline handler or style attribute is obeyed.
PAGE_PREFIX = "/review"
BASE_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


def page_policy(nonce: str) -> str:
    """The reviewer's page: its nonce-carrying <script> and <style>, its photos, calls to this service and
    forms posting here; nothing else, and never inside a frame."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def response_headers(nonce: str | None) -> dict[str, str]:
    """The security headers of one answer; `nonce`: a page's (None: an API answer, or FastAPI's /docs that
    loads Swagger UI's own scripts - those only may not be framed)."""
    policy = page_policy(nonce) if nonce is not None else "frame-ancestors 'none'"
    return BASE_HEADERS | {"content-security-policy": policy}


class SecurityHeaders:
    """Pure ASGI middleware: `response_headers` on every HTTP answer (a header the application set itself
    is kept). A page request's nonce is made here and read by the page as it renders (review.page.PAGE_NONCE)."""

    def __init__(self, app, page_prefix: str = PAGE_PREFIX):
        self.app, self.prefix = app, page_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        nonce = secrets.token_urlsafe(16) if path == self.prefix or path.startswith(self.prefix + "/") else None
        extra = [(k.encode(), v.encode()) for k, v in response_headers(nonce).items()]

        async def send_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {bytes(k).lower() for k, _ in headers}
                message = {**message, "headers": headers + [(k, v) for k, v in extra if k not in have]}
            await send(message)

        token = PAGE_NONCE.set(nonce)
        try:
            await self.app(scope, receive, send_headers)
        finally:
            PAGE_NONCE.reset(token)
