"""Slow clients are shed: a real `./run.sh serve` process with `serve.client_timeout_s=2` closes connections
that trickle their request head or body (408) or send nothing at all, while normal requests made at the
same time are answered at once."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import REPO
from test_serve import free_port, served, wait_serving  # noqa: F401 - `served`: the module's models folder (a fixture)

TIMEOUT_S = 2.0
SLACK_S = 3.0  # the server must have closed a slow connection by TIMEOUT_S + this
TRICKLE_S = 0.5  # one byte per this
HEAD = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
        b"X-Padding: " + b"p" * 200 + b"\r\n\r\n")
BODY = b'{"id": 1, "title": "dog wet can"' + b" " * 200


@contextmanager
def serving(models, *flags: str):
    """`./run.sh serve` on `models` with a TIMEOUT_S client time-out (and `flags`), ready: (its URL, its
    port, the process); stopped at the end."""

    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([str(REPO / "run.sh"), "serve", "--models", str(models), "--port", str(port),
                                "--set", f"serve.client_timeout_s={TIMEOUT_S}", *flags],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, process, 90)
        yield url, port, process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def server(served):
    """One process, shared by the tests of this module (the last one stops it and reads its log)."""
    _, models, _ = served
    with serving(models) as running:
        yield running


class Trickler:
    """Open connections that send `rest` one byte per TRICKLE_S (`step`); when and how each ended (seconds
    after the start, what the server answered)."""

    def __init__(self, socks: list[socket.socket], rest: bytes):
        self.socks, self.rest = socks, rest
        for s in socks:
            s.setblocking(False)
        self.start = time.monotonic()
        self.answers = [b""] * len(socks)
        self.closed_after: list[float | None] = [None] * len(socks)

    @classmethod
    def connect(cls, port: int, first: bytes, rest: bytes, n: int) -> "Trickler":
        """`n` new connections that send `first` at once, then `rest` byte by byte."""
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for s in socks:
            s.sendall(first)
        return cls(socks, rest)

    def step(self, i: int) -> None:
        """Read what came and send the next byte, on every connection still open."""
        for k, s in enumerate(self.socks):
            if self.closed_after[k] is not None:
                continue
            try:
                while data := s.recv(65536):
                    self.answers[k] += data
                ended = True  # recv returned b"": the server closed
            except BlockingIOError:
                ended = False
            except OSError:
                ended = True  # reset
            if not ended and i < len(self.rest):
                try:
                    s.send(self.rest[i:i + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    ended = True
            if ended:
                self.closed_after[k] = time.monotonic() - self.start
                s.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()


def trickle(*tricklers: Trickler) -> None:
    """Step every trickler until the server has closed all their connections, or for TIMEOUT_S + SLACK_S + 1 s."""
    i, start = 0, time.monotonic()
    while time.monotonic() - start < TIMEOUT_S + SLACK_S + 1:
        for t in tricklers:
            t.step(i)
        if all(c is not None for t in tricklers for c in t.closed_after):
            return
        i += 1
        time.sleep(TRICKLE_S)


def normal_requests(url: str, until: float, out: list) -> None:
    """/v1/predict on a kept-alive connection until `until`: (status, seconds) of each."""
    import httpx

    with httpx.Client(timeout=30) as client:
        while time.monotonic() < until:
            start = time.monotonic()
            status = client.post(f"{url}/v1/predict", json={"id": 1, "title": "dog wet can"}).status_code
            out.append((status, time.monotonic() - start))
            time.sleep(0.1)


def test_slow_clients_are_closed_and_others_are_answered_meanwhile(server):
    url, port, process = server
    heads = Trickler.connect(port, b"", HEAD, 20)  # a request head, a byte every half second
    bodies = Trickler.connect(port, HEAD, BODY, 3)  # the whole head, then the body a byte every half second
    idle = Trickler.connect(port, b"", b"", 2)  # connect, send nothing
    normal: list = []
    asking = threading.Thread(target=normal_requests, args=(url, time.monotonic() + TIMEOUT_S + SLACK_S, normal))
    asking.start()
    try:
        trickle(heads, bodies, idle)
    finally:
        asking.join()
        for t in (heads, bodies, idle):
            t.close()
    for name, t in (("head", heads), ("body", bodies), ("idle", idle)):
        still_open = sum(c is None for c in t.closed_after)
        assert still_open == 0, f"{still_open} of {len(t.socks)} slow-{name} connections still open after " \
                                f"{TIMEOUT_S + SLACK_S + 1:.0f} s (serve.client_timeout_s={TIMEOUT_S})"
        assert all(TIMEOUT_S - 0.5 <= c <= TIMEOUT_S + SLACK_S for c in t.closed_after), (name, t.closed_after)
    for answer in heads.answers + bodies.answers:  # those that sent something read why
        assert answer.startswith(b"HTTP/1.1 408 ") and b"application/problem+json" in answer, answer[:200]
        assert b"serve.client_timeout_s" in answer and b"connection: close" in answer.lower()
    assert idle.answers == [b"", b""]
    # the other clients were answered the whole time, at once
    assert len(normal) >= 5 and all(status == 200 for status, _ in normal), normal
    assert max(seconds for _, seconds in normal) < 1.5, normal
    import httpx

    assert httpx.post(f"{url}/v1/predict", json={"id": 2, "title": "cat kitten food"}).status_code == 200


def read_answer(s: socket.socket) -> bytes:
    """One whole answer with a Content-Length, from a blocking socket."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_kept_alive_connection_gets_the_time_out_for_each_request(server):
    """The deadline starts again with each request of a kept-alive connection: a quick first request is
    answered, a trickled second one is shed."""
    _, port, _ = server
    body = b'{"id": 1, "title": "dog wet can"}'
    quick = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        time.sleep(TIMEOUT_S * 0.75)  # most of the first deadline spent before the request
        s.sendall(quick)
        first = read_answer(s)
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"}"), first[:200]
        second = Trickler([s], HEAD)  # the same connection, now trickling its second request
        i = 0
        while second.closed_after[0] is None and time.monotonic() - second.start < TIMEOUT_S + SLACK_S + 1:
            second.step(i)  # keep-alive allows 5 s of silence; a byte every half second is not silence
            i += 1
            time.sleep(TRICKLE_S)
    assert second.closed_after[0] is not None and TIMEOUT_S - 0.5 <= second.closed_after[0] <= TIMEOUT_S + SLACK_S
    assert second.answers[0].startswith(b"HTTP/1.1 408 "), second.answers[0][:200]


def test_the_log_has_no_failure_for_the_shed_clients(server):
    """The last test of the shared process: stop it and read its log."""
    _, _, process = server
    process.terminate()
    log = process.communicate(timeout=30)[0]
    assert "Traceback" not in log and "Exception in ASGI" not in log and " 500 items=" not in log, log[-3000:]
    assert log.count("408 (request head): the request was not in after") >= 21  # 20 + the kept-alive one
    assert log.count("408 POST /v1/predict (body)") == 3 and "serve.client_timeout_s=2" in log
    assert "POST /v1/predict 200 items=1" in log


def test_every_worker_of_several_sheds_slow_clients(served):
    """--workers 2: the protocol reaches every worker (uvicorn spawns them) with the time-out."""
    import httpx

    _, models, _ = served
    with serving(models, "--workers", "2") as (url, port, process):
        heads = Trickler.connect(port, b"", HEAD, 6)
        bodies = Trickler.connect(port, HEAD, BODY, 2)
        try:
            trickle(heads, bodies)
            assert httpx.post(f"{url}/v1/predict", json={"id": 1, "title": "dog wet can"}).status_code == 200
        finally:
            heads.close()
            bodies.close()
        process.terminate()
        log = process.communicate(timeout=30)[0]
    for t in (heads, bodies):
        closed = t.closed_after
        assert all(c is not None and TIMEOUT_S - 0.5 <= c <= TIMEOUT_S + SLACK_S for c in closed), closed
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in t.answers), t.answers
    assert log.count("408 (request head)") == 6 and log.count("408 POST /v1/predict (body)") == 2, log[-3000:]
    assert "Traceback" not in log and " 500 items=" not in log, log[-3000:]
