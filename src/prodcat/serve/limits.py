"""The body size limit, as a pure ASGI middleware: a request whose Content-Length is over the limit is
answered 413 before any of it is read; a body without one (chunked) is counted as it streams in and
answered 413 as soon as the count passes the limit - the application then reads a disconnect and whatever
it would still send is dropped. Before the 413 goes out, the rest of the body is read and thrown away (up
to DRAIN_BYTES): a client that sends its whole body before it reads the answer gets to read the 413,
where closing on unread bytes would reset the connection under it."""
from __future__ import annotations

from prodcat.serve.problems import PROBLEM_JSON, Problem

DRAIN_BYTES = 64 * 1024 * 1024  # of a rejected body, read and dropped at most (then the connection closes)


class BodySizeLimit:
    """At most `max_bytes` of request body per HTTP request."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self.reject(send, f"the body has {declared:,} bytes", receive)
        await _Counted(self, receive, send)(scope)

    async def reject(self, send, what: str, receive=None) -> None:
        """Answer 413 and close the connection; `receive`: first read what is left of the body (dropped)."""
        if receive is not None:
            await drain(receive)
        problem = Problem(413, "request too large", f"{what}; the service takes at most {self.max_bytes:,} "
                          "bytes per request (serve.max_body_bytes): send fewer products per request",
                          kind="too-large", headers={"connection": "close"})
        body = problem.encoded()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _Counted:
    """One request whose body bytes are counted as the application reads them."""

    def __init__(self, limit: BodySizeLimit, receive, send):
        self.limit, self._receive, self._send = limit, receive, send
        self.seen, self.rejected, self.started = 0, False, False

    async def __call__(self, scope) -> None:
        try:
            await self.limit.app(scope, self.receive, self.send)
        except Exception:
            if not self.rejected:
                raise  # the application's own failure: not ours to hide

    async def receive(self):
        if self.rejected:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit.max_bytes:
                self.rejected = True
                if not self.started:
                    await self.limit.reject(self._send, f"the body passed {self.limit.max_bytes:,} bytes",
                                            self._receive if message.get("more_body", False) else None)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message) -> None:
        if self.rejected:
            return  # the 413 went out instead
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def drain(receive) -> None:
    """Read the rest of a request body (at most DRAIN_BYTES) and drop it."""
    left = DRAIN_BYTES
    while left > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
