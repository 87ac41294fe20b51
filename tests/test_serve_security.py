"""The defences of the reviewer's page: wrong keys at sign-in are throttled per client address and overall
(429 with Retry-After, in a real uvicorn process too), signing out ends the session on the server (the old
cookie opens nothing, in any worker sharing the review store), and an idempotency key belongs to the reviewer
who made it."""
import signal
import threading
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from test_review_page import REVIEWERS, queue_batch, start_server, store_of
from test_serve import served, wait_ready  # noqa: F401 - `served` is a fixture

from prodcat.serve.app import create_app
from prodcat.serve.problems import PROBLEM_JSON
from prodcat.serve.security import SIGN_IN_FAILURES_PER_CLIENT, SIGN_IN_WINDOW_S, SignInThrottle

COOKIE = "prodcat_reviewer"


@pytest.fixture(scope="module")
def guarded(served, tmp_path_factory):  # noqa: F811
    """Two services (two 'workers') of the same models sharing one review store: (client, other client,
    folder, models)."""
    _, models, tmp = served
    folder = tmp_path_factory.mktemp("guards")
    (folder / "reviewers.txt").write_text(REVIEWERS)
    review = {"reviewers_file": str(folder / "reviewers.txt"), "url": f"sqlite:///{folder / 'review.db'}"}
    settings = {"api_key_file": str(tmp / "key.txt")}
    with TestClient(create_app(models, settings, review=review)) as one, \
            TestClient(create_app(models, settings, review=review)) as other:
        wait_ready(one)
        wait_ready(other)
        yield one, other, folder, models


def signed_in(client: TestClient, key: str) -> TestClient:
    """A fresh client of the same app, signed in with `key`."""
    fresh = TestClient(client.app)
    answer = fresh.post("/review/sign-in", data={"key": key}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return fresh


def assert_problem(answer, status: int, *words: str) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.json()
    assert body["status"] == status and all(w in body["detail"] for w in words), body
    return body


# -- sign-in throttle --------------------------------------------------------------------------------------
def test_twenty_parallel_wrong_keys_to_a_real_uvicorn_process_get_429_past_the_limit(served, tmp_path):  # noqa: F811
    _, models, _ = served
    (tmp_path / "reviewers.txt").write_text(REVIEWERS)
    server, url = start_server(models, tmp_path)
    try:
        answers, start = [], threading.Barrier(20)

        def guess(n: int) -> None:
            start.wait()
            answers.append(httpx.post(f"{url}/review/sign-in", data={"key": f"wrong-key-{n:04d}"}, timeout=60))

        guessers = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
        for thread in guessers:
            thread.start()
        for thread in guessers:
            thread.join()
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [401] * SIGN_IN_FAILURES_PER_CLIENT + [429] * (20 - SIGN_IN_FAILURES_PER_CLIENT)
        for refused in (a for a in answers if a.status_code == 429):
            assert 1 <= int(refused.headers["retry-after"]) <= SIGN_IN_WINDOW_S
            assert_problem(refused, 429, "wrong reviewer keys from this address", "try again in")
        right = httpx.post(f"{url}/review/sign-in", data={"key": "annkey-0001"}, timeout=60)  # blocked: a right key too
        assert right.status_code == 429 and COOKIE not in right.headers.get("set-cookie", "")
        page = httpx.post(f"{url}/review/sign-in", data={"key": "annkey-0001"}, headers={"Accept": "text/html"})
        assert page.status_code == 429 and "try again in" in page.text and "retry-after" in page.headers
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    log = server.stdout.read()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]


def test_a_right_key_works_again_once_the_block_ends(guarded):
    client, _, _, _ = guarded
    desk = client.app.state.service.desk
    now = [0.0]  # the throttle's clock, moved by the test
    desk.throttle = SignInThrottle(per_client=2, overall=100, window_s=60, clock=lambda: now[0])
    try:
        fresh = TestClient(client.app)
        assert [fresh.post("/review/sign-in", data={"key": "nope-nope"}).status_code for _ in range(2)] == [401, 401]
        now[0] = 20.0
        blocked = fresh.post("/review/sign-in", data={"key": "annkey-0001"}, follow_redirects=False)
        assert_problem(blocked, 429, "2 wrong reviewer keys from this address in the last 60 s", "try again in 40 s")
        assert blocked.headers["retry-after"] == "40" and COOKIE not in blocked.headers.get("set-cookie", "")
        now[0] = 60.0  # the block ends
        assert fresh.post("/review/sign-in", data={"key": "annkey-0001"}, follow_redirects=False).status_code == 303
        desk.throttle = SignInThrottle(per_client=100, overall=3, window_s=60)  # many addresses: the overall limit
        for _ in range(3):
            assert fresh.post("/review/sign-in", data={"key": "nope-nope"}).status_code == 401
        assert_problem(fresh.post("/review/sign-in", data={"key": "bobkey-0002"}), 429,
                       "3 wrong reviewer keys from all addresses")
    finally:
        desk.throttle = SignInThrottle()


def test_the_throttle_counts_each_address_and_all_of_them_over_a_sliding_window():
    now = [1000.0]
    throttle = SignInThrottle(per_client=3, overall=5, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.blocked("10.0.0.1") is None
        throttle.failed("10.0.0.1")
    assert throttle.blocked("10.0.0.1").retry_after == 60 and throttle.blocked("10.0.0.2") is None
    now[0] += 30
    throttle.failed("10.0.0.2")
    throttle.failed("10.0.0.3")
    everyone = throttle.blocked("10.0.0.4")
    assert everyone.retry_after == 30 and "from all addresses" in everyone.detail
    now[0] += 30  # the first address's failures leave the window
    assert throttle.blocked("10.0.0.1") is None and throttle.blocked("10.0.0.4") is None
    now[0] += 60
    assert throttle.blocked("10.0.0.2") is None and not throttle._by_client  # memory is freed


# -- sign-out ---------------------------------------------------------------------------------------------
def test_a_signed_out_cookie_no_longer_opens_the_review_page_in_any_worker(guarded):
    client, other, _, _ = guarded
    ann = signed_in(client, "annkey-0001")
    cookie = ann.cookies[COOKIE]
    assert "Sign out" in ann.get("/review").text
    for app in (client.app, other.app):  # the same cookie opens the page in both workers
        assert "Sign out" in TestClient(app, cookies={COOKIE: cookie}).get("/review").text
    still = signed_in(client, "annkey-0001")  # another session of the same reviewer
    assert ann.post("/review/sign-out", follow_redirects=False).status_code == 303
    for app in (client.app, other.app):
        replay = TestClient(app, cookies={COOKIE: cookie})
        page = replay.get("/review")
        assert page.status_code == 200 and "Reviewer key" in page.text and "Sign out" not in page.text
        assert_problem(replay.post("/review/decide", json={"product_id": 1, "action": "skip",
                                                           "idempotency_key": str(uuid.uuid4())}), 401, "sign in")
        assert_problem(replay.post("/review/undo", json={"idempotency_key": str(uuid.uuid4())}), 401)
        assert replay.get("/review/photo/1").status_code == 401
        assert replay.post("/review/sign-out", follow_redirects=False).status_code == 303  # again: no error
    assert "Sign out" in still.get("/review").text  # only the signed-out session ended
    for forged in ("ann.99999999999.deadbeef", f"ann.{'0' * 32}.99999999999.{'0' * 64}", "ann.x.²³.y", "."):
        raw = f"{COOKIE}={forged}".encode("latin-1")  # '²³': digits to str.isdigit, not to int()
        assert "Reviewer key" in TestClient(client.app).get("/review", headers={"cookie": raw}).text


# -- idempotency keys ---------------------------------------------------------------------------------------
def test_another_reviewer_reusing_an_idempotency_key_is_refused(guarded):
    client, _, folder, models = guarded
    assert queue_batch(client, n=8, start=80_000).status_code == 200
    ann, bob = signed_in(client, "annkey-0001"), signed_in(client, "bobkey-0002")
    ann.get("/review")
    item = store_of(folder, models).claim_next("ann")  # ann's product on her page
    decision = {"product_id": item["product_id"], "category_id": item["suggestions"][0][0], "action": "accept",
                "idempotency_key": str(uuid.uuid4())}
    assert ann.post("/review/decide", json=decision).status_code == 200
    assert ann.post("/review/decide", json=decision).status_code == 200  # her own retry: the same decision
    body = assert_problem(bob.post("/review/decide", json=decision), 409, "belongs to another reviewer")
    assert "ann" not in body["detail"] and str(item["product_id"]) not in body["detail"]
    other_product = decision | {"product_id": item["product_id"] + 1}
    body = assert_problem(bob.post("/review/decide", json=other_product), 409, "belongs to another reviewer")
    assert str(item["product_id"]) not in body["detail"]
    assert_problem(bob.post("/review/undo", json={"idempotency_key": decision["idempotency_key"]}), 409,
                   "belongs to another reviewer")
    frame = store_of(folder, models).decisions_frame()
    mine = frame[frame["idempotency_key"] == decision["idempotency_key"]]
    assert len(mine) == 1 and mine["reviewer"].tolist() == ["ann"]
    assert not (frame["reviewer"] == "bob").any()
