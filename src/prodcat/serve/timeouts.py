"""Slow clients are shed: uvicorn's h11 protocol with a read deadline. A client has `serve.client_timeout_s`
to send a whole request - head and body - counted from the moment it connects, or for a later request on
a kept-alive connection from its first byte. A client still sending when that time is up is answered 408
(application/problem+json, `Connection: close`) and the connection is closed; one that has sent nothing is
closed without an answer (like uvicorn's idle keep-alive). Between requests uvicorn's own keep-alive
time-out holds. Without this a client trickling a byte a second holds its connection (and a file
descriptor) for as long as it likes: uvicorn has no header or body read time-out.

`./run.sh serve` selects the class by import string (`uvicorn.run(http=PROTOCOL)`), so every worker of
several gets it, and hands the time-out over in the environment (CLIENT_TIMEOUT_ENV)."""
from __future__ import annotations

import asyncio
import logging
import os
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from prodcat.serve.problems import PROBLEM_JSON, Problem

PROTOCOL = "prodcat.serve.timeouts:DeadlineH11Protocol"
CLIENT_TIMEOUT_ENV = "PRODCAT_SERVE_CLIENT_TIMEOUT_S"  # what ./run.sh serve hands each worker
DEFAULT_TIMEOUT_S = 10.0  # the declared default of serve.client_timeout_s, where the environment says nothing
RECEIVING = (h11.IDLE, h11.SEND_BODY)  # the client's states while its request is still on the way
log = logging.getLogger("prodcat.serve")


def client_timeout_s() -> float:
    return float(os.environ.get(CLIENT_TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's H11Protocol, plus: each request (head and body) must have arrived within the time-out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout_s = client_timeout_s()
        self.deadline: asyncio.TimerHandle | None = None
        self.request_started = 0.0
        self.request_bytes = 0  # of the request on the way (what the log line says; never its content)

    # -- the deadline: armed when a request starts, disarmed once it is in -----------------------------------
    def arm(self) -> None:
        self.disarm()
        self.request_started, self.request_bytes = time.monotonic(), 0
        self.deadline = self.loop.call_later(self.client_timeout_s, self.too_slow)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def disarm_when_received(self) -> None:
        if self.deadline is not None and (self.conn.their_state not in RECEIVING or self.transport.is_closing()):
            self.disarm()

    # -- uvicorn's protocol, with the deadline -------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm()

    def data_received(self, data: bytes) -> None:
        if self.deadline is None and self.conn.their_state in RECEIVING:
            self.arm()  # the first bytes of the next request on a kept-alive connection
        self.request_bytes += len(data)
        super().data_received(data)
        self.disarm_when_received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined request whose head is in but not its body (an incomplete head is left to the keep-alive)
        if self.deadline is None and not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self.arm()

    def handle_websocket_upgrade(self, event) -> None:
        self.disarm()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc) -> None:
        self.disarm()
        super().connection_lost(exc)

    # -- time is up ----------------------------------------------------------------------------------------
    def too_slow(self) -> None:
        """The request has not arrived in time: 408 where an answer can still go out, then close."""
        self.deadline = None
        if self.transport.is_closing() or self.conn.their_state not in RECEIVING:
            return
        cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if cycle is not None:  # the head is in and the application is reading the body: it reads a disconnect
            cycle.disconnected, cycle.keep_alive = True, False  # what it still sends is dropped
            cycle.message_event.set()
        sent_some = self.request_bytes or self.conn.their_state is h11.SEND_BODY
        if sent_some and (cycle is None or not cycle.response_started):
            self.answer_408()
            log.info("408 %s: the request was not in after %.1f s (%d bytes came; serve.client_timeout_s=%g); "
                     "connection closed", self.method_and_path(), time.monotonic() - self.request_started,
                     self.request_bytes, self.client_timeout_s)
        self.transport.close()

    def answer_408(self) -> None:
        body = Problem(408, "request timeout", f"the request (head and body) did not arrive within "
                       f"{self.client_timeout_s:g} s (serve.client_timeout_s); the connection is closed",
                       kind="request-timeout").encoded()
        headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            output = self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
            output += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # no answer can go out in this state: only the close
            return
        self.transport.write(output)

    def method_and_path(self) -> str:
        if self.conn.their_state is h11.SEND_BODY and self.scope is not None:
            return f"{self.scope['method']} {self.scope['path'][:200]} (body)"
        return "(request head)"
