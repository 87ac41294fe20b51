"""The reviewer's page inside the service: products reach the queue from POST /v1/predict, reviewers sign in
with a key, decide with the keyboard (a real headless Chromium drives the page), undo, and what they decided
is in the store exactly once and answers the next prediction of the same text."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from fastapi.testclient import TestClient
from test_serve import KEY, free_port, served, wait_ready, wait_serving  # noqa: F401 - `served` is a fixture

from prodcat.review.items import audit_sample
from prodcat.review.store import ReviewStore
from prodcat.serve.app import create_app

REVIEWERS = "ann annkey-0001\nbob bobkey-0002\n"
WORDS = "apple banana cherry dune eagle falcon garnet harbor island jungle kettle lemon".split()  # titles apart
CHAPPI = "dry wet chappi meal with beef and vegetables"  # + a size: near-duplicates; dry or wet (two leaves): unsure
SCREENSHOT = REPO / "reports" / "review_page.png"  # looked at after each test run (README shows one)


def queue_batch(client_or_url, n: int = 12, start: int = 50_000, key: str | None = KEY):
    """POST /v1/predict with review: the products under a threshold of 0.999 are flagged."""
    import httpx

    body = {"products": [{"id": start + i, "title": f"{['dog', 'cat'][i % 2]} food item {i} {WORDS[i % 12]}",
                          "short_description": "a product to review"} for i in range(n)],
            "threshold": 0.999, "review": True}
    headers = {"X-API-Key": key} if key else {}
    if isinstance(client_or_url, str):
        return httpx.post(f"{client_or_url}/v1/predict", json=body, headers=headers, timeout=60)
    return client_or_url.post("/v1/predict", json=body, headers=headers)


@pytest.fixture(scope="module")
def desk(served, tmp_path_factory):  # noqa: F811
    _, models, tmp = served
    folder = tmp_path_factory.mktemp("desk")
    (folder / "reviewers.txt").write_text(REVIEWERS)
    review = {"reviewers_file": str(folder / "reviewers.txt"), "url": f"sqlite:///{folder / 'review.db'}"}
    with TestClient(create_app(models, {"api_key_file": str(tmp / "key.txt")}, review=review)) as client:
        wait_ready(client)
        yield client, folder, models


def store_of(folder: Path, models: Path) -> ReviewStore:
    from prodcat.data.tree import CategoryTree

    tree = CategoryTree.from_csv(models / "categories_tree.csv")
    return ReviewStore(f"sqlite:///{folder / 'review.db'}", models.name, tree)


def test_predict_queues_flagged_products_with_the_api_key_only(desk):
    client, folder, models = desk
    assert queue_batch(client, key=None).status_code == 401
    assert queue_batch(client, key="wrong").status_code == 403
    answer = queue_batch(client)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    flagged = np.array([p["needs_review"] for p in predictions])
    audit = ~flagged & audit_sample(np.array([p["id"] for p in predictions]), 0.02)
    assert flagged.sum() >= 6 and all(p["source"] == "model" for p in predictions)
    queued = store_of(folder, models).counters()["left"]
    assert queued == flagged.sum() + audit.sum()
    assert queue_batch(client).status_code == 200 and store_of(folder, models).counters()["left"] == queued  # once


def test_the_page_needs_a_reviewer_key_and_decisions_are_kept_once(desk):
    client, folder, models = desk
    queue_batch(client, start=60_000)
    fresh = TestClient(client.app)
    assert "Reviewer key" in fresh.get("/review").text  # signed out: the form, no product
    assert fresh.post("/review/sign-in", data={"key": "nope"}).status_code == 401
    assert fresh.post("/review/decide", json={"product_id": 1, "action": "skip",
                                              "idempotency_key": "k" * 10}).status_code == 401
    signed = fresh.post("/review/sign-in", data={"key": "annkey-0001"}, follow_redirects=False)
    assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
    assert "annkey-0001" not in signed.headers["set-cookie"]  # a signed session, never the key itself
    forged = TestClient(client.app, cookies={"prodcat_reviewer": "ann.99999999999.deadbeef"})
    assert "Reviewer key" in forged.get("/review").text  # a forged session: the sign-in form, no 500
    page = fresh.get("/review").text
    assert "id=product" in page and "ann" in page and "<kbd>1</kbd>" in page
    store = store_of(folder, models)
    item = store.claim_next("ann")  # the page's product (ann's own claim comes back)
    leaf = item["suggestions"][0][0]
    decision = {"product_id": item["product_id"], "category_id": leaf, "action": "accept",
                "idempotency_key": str(uuid.uuid4())}
    first = fresh.post("/review/decide", json=decision)
    assert first.status_code == 200 and f"data-id={item['product_id']}" not in first.json()["item_html"]
    assert fresh.post("/review/decide", json=decision).status_code == 200  # a double submit
    assert (store.decisions_frame()["idempotency_key"] == decision["idempotency_key"]).sum() == 1
    bad = fresh.post("/review/decide", json=decision | {"idempotency_key": str(uuid.uuid4()), "category_id": 0})
    assert bad.status_code in (409, 422) and bad.headers["content-type"] == "application/problem+json"
    for wrong in ({"category_id": None, "action": "correct"}, {"product_id": 10**20}):  # no leaf; id out of range
        answer = fresh.post("/review/decide", json=decision | wrong | {"idempotency_key": str(uuid.uuid4())})
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert fresh.get(f"/review/photo/{10**20}").status_code == 422
    undone = fresh.post("/review/undo", json={"idempotency_key": str(uuid.uuid4())})
    assert undone.status_code == 200 and f"data-id={item['product_id']}" in undone.json()["item_html"]


def test_a_decided_text_is_answered_from_the_decision_and_not_queued_again(desk):
    client, folder, models = desk
    store = store_of(folder, models)
    queue_batch(client, start=70_000)
    item = store.claim_next("bob")
    leaf = item["suggestions"][-1][0]
    store.decide(item["product_id"], leaf, "correct", "bob", str(uuid.uuid4()))
    same_text = {k: item["snapshot"][k] for k in ("title", "short_description")}
    again = client.post("/v1/predict", json={"products": [{"id": 90_000, **same_text}], "threshold": 0.999,
                                             "review": True}, headers={"X-API-Key": KEY})
    prediction = again.json()["predictions"][0]
    assert prediction["source"] == "review" and prediction["predicted_category_id"] == leaf
    assert prediction["confidence"] == 1.0 and not prediction["needs_review"]
    assert store.item(90_000) is None  # answered, never queued


def queue_group(client_or_url, start: int, sizes=("15 kg", "2.5 kg", "10 kg", "3 kg", "7 kg", "20 kg")) -> list[int]:
    """Near-duplicates, predicted with review: the flagged ones (at least 3; their titles name the words of
    two leaves, so the tiny models are unsure of them) form one group. Returns their ids."""
    import httpx

    body = {"products": [{"id": start + k, "title": f"{CHAPPI} {size}"} for k, size in enumerate(sizes)],
            "threshold": 1.0, "review": True}
    if isinstance(client_or_url, str):
        answer = httpx.post(f"{client_or_url}/v1/predict", json=body, headers={"X-API-Key": KEY}, timeout=60)
    else:
        answer = client_or_url.post("/v1/predict", json=body, headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text
    flagged = [p["id"] for p in answer.json()["predictions"] if p["needs_review"]]
    assert len(flagged) >= 3, answer.text
    return flagged


def test_a_group_is_decided_in_one_request_less_its_excluded_members(desk):
    client, folder, models = desk
    flagged = queue_group(client, 95_000)
    store = store_of(folder, models)
    group = {i: store.item(i)["group_id"] for i in flagged}
    lead = next(i for i, g in group.items() if g == i)
    members = sorted(i for i in group if i != lead)
    assert set(group.values()) == {lead}
    signed = TestClient(client.app)
    signed.post("/review/sign-in", data={"key": "bobkey-0002"})
    while (item := store.claim_next("bob"))["product_id"] != lead:  # bob's page comes to the group
        store.decide(item["product_id"], None, "skip", "bob", str(uuid.uuid4()))
    html = signed.get("/review").text
    assert f"data-id={lead}" in html and all(f"data-member={m}" in html for m in members) and "<mark>" in html
    decision = {"product_id": lead, "category_id": item["suggestions"][0][0], "action": "accept",
                "idempotency_key": str(uuid.uuid4())}
    for wrong, message in (([123], "excluded product(s) 123 are not open members"), (["x"], "whole number")):
        answer = signed.post("/review/decide", json=decision | {"excluded": wrong})
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
        assert message in answer.text
    answer = signed.post("/review/decide", json=decision | {"excluded": [members[1]]})
    assert answer.status_code == 200, answer.text
    frame = store.decisions_frame().set_index("idempotency_key")
    rows = frame[frame["group_id"] == lead]
    assert sorted(rows["product_id"]) == sorted(set(flagged) - {members[1]})  # a row each, but the excluded one
    assert set(rows["chosen_leaf"]) == {decision["category_id"]}
    assert store.item(members[1])["group_id"] is None and store.item(members[1])["decision_id"] is None
    undone = signed.post("/review/undo", json={"idempotency_key": str(uuid.uuid4())})
    assert undone.status_code == 200 and f"data-member={members[0]}" in undone.json()["item_html"]
    assert all(store.item(i)["decision_id"] is None for i in flagged)


def test_without_reviewers_there_is_no_page(served):  # noqa: F811
    _, models, tmp = served
    with TestClient(create_app(models, {"api_key_file": str(tmp / "key.txt")})) as client:
        wait_ready(client)
        assert client.get("/review").status_code == 404
        assert queue_batch(client).status_code == 422


# -- the page in a real browser ----------------------------------------------------------------------------
def browser():
    """Headless Chromium through Selenium and Debian's chromium-driver (.ci/run installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,900"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='prodcat-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations show there
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def start_server(models: Path, folder: Path):

    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PRODCAT_API_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "prodcat", "serve", "--models", str(models), "--port", str(port), "--set",
         f"review.reviewers_file={folder / 'reviewers.txt'}", "--set", f"review.url=sqlite:///{folder / 'review.db'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_serving(url, server)
    return server, url


def ready(driver) -> bool:
    """The product on screen has been there for the dwell (review.dwell_ms): keys decide it now."""
    return driver.execute_script("const p = document.getElementById('product'); "
                                 "return !!(p && p.classList.contains('ready'))")


needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                    reason="Debian's chromium and chromium-driver are not installed (.ci/run "
                                           "installs them)")


@needs_chromium
def test_a_reviewer_works_through_the_queue_with_the_keyboard(served, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, models, _ = served
    (tmp_path / "reviewers.txt").write_text(REVIEWERS)
    server, url = start_server(models, tmp_path)
    driver = browser()
    try:
        assert queue_batch(url, n=6).status_code == 200
        driver.get(f"{url}/review")
        driver.find_element(By.NAME, "key").send_keys("annkey-0001\n")
        wait = WebDriverWait(driver, 20)

        def shown():  # read in one script: the page swaps its HTML under the test
            return driver.execute_script("const p = document.getElementById('product'); return p && p.dataset.id")

        first = wait.until(lambda d: shown())
        first_leaf = driver.execute_script("return document.querySelector(\"#product li[data-n='1']\").dataset.id")
        body = driver.find_element(By.TAG_NAME, "body")
        wait.until(lambda d: ready(d))  # a key decides a product only once it has been on screen a moment
        body.send_keys("1")  # accept suggestion 1
        second = wait.until(lambda d: shown() != first and shown())
        latency = [driver.execute_script("return window.prodcatShownMs")]
        body.send_keys("/")  # correct through the type-ahead
        box = wait.until(lambda d: d.find_element(By.ID, "q") if d.find_element(By.ID, "q").is_displayed() else None)
        box.send_keys("cat")
        chosen = wait.until(lambda d: d.execute_script("const h = document.querySelector('#hits li'); "
                                                       "return h && h.dataset.id"))
        wait.until(lambda d: ready(d))
        box.send_keys("\n")
        third = wait.until(lambda d: shown() not in (first, second) and shown())
        latency.append(driver.execute_script("return window.prodcatShownMs"))
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("u")  # undo the correction: its product comes back
        wait.until(lambda d: shown() == second)
        driver.refresh()  # a reloaded page shows the same product (the reviewer's claim)
        assert wait.until(lambda d: shown()) == second and third != second
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    frame = store_of(tmp_path, models).decisions_frame()
    assert frame["action"].tolist() == ["accept", "correct", "undo"]
    assert frame["product_id"].tolist()[:2] == [int(first), int(second)]
    assert frame["chosen_leaf"].tolist()[:2] == [int(first_leaf), int(chosen)]
    print(f"\n[review page] key press -> next product shown: {', '.join(f'{ms:.0f} ms' for ms in latency)}")


# -- the page's guards: keys decide only what was seen, long content never hides the decision, CSP --------
KEY_CODES = {"1": ("Digit1", 49), "2": ("Digit2", 50), "s": ("KeyS", 83), "u": ("KeyU", 85), "d": ("KeyD", 68),
             "p": ("KeyP", 80), "x": ("KeyX", 88)}
SEEN_KEYS = ("window.keysSeen = []; document.addEventListener('keydown', "
             "(e) => window.keysSeen.push([e.key, e.repeat]), true);")
CSP_WATCH = ("window.cspViolations = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));")


class Live:
    """A served page in headless Chromium: the server's url, the driver, the review store."""

    def __init__(self, url: str, driver, store: ReviewStore):
        self.url, self.driver, self.store = url, driver, store

    def shown(self):  # read in one script: the page swaps its HTML under the test
        return self.driver.execute_script("const p = document.getElementById('product'); return p && p.dataset.id")

    def sign_in(self, key: str = "annkey-0001"):
        from selenium.webdriver.common.by import By

        self.driver.get(f"{self.url}/review")
        self.driver.find_element(By.NAME, "key").send_keys(key + "\n")
        return self.wait(lambda: self.shown())

    def wait(self, condition, seconds: float = 20):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, seconds, poll_frequency=0.01).until(lambda _: condition())

    def press(self, key: str, repeat: bool = False) -> None:
        """A real key press (Chromium's input pipeline, as from the keyboard); `repeat`: an auto-repeat of a
        held key (KeyboardEvent.repeat), no key-up."""
        code, vk = KEY_CODES[key]
        event = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
        self.driver.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyDown", "text": key,
                                                               "autoRepeat": repeat, **event})
        if not repeat:
            self.driver.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", **event})

    def decided(self) -> list[int]:
        return [int(p) for p in self.store.decisions_frame()["product_id"]]

    def rects(self, selector: str) -> list[dict]:
        return self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => { const r = e.getBoundingClientRect(); "
            "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, w: r.width, h: r.height}; })",
            selector)

    def viewport(self) -> tuple[int, int]:
        return tuple(self.driver.execute_script("return [window.innerWidth, window.innerHeight]"))


@pytest.fixture
def live(served, tmp_path):  # noqa: F811
    """The service with reviewers (a store of its own) and a headless Chromium."""
    _, models, _ = served
    (tmp_path / "reviewers.txt").write_text(REVIEWERS)
    server, url = start_server(models, tmp_path)
    driver = browser()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SEEN_KEYS + CSP_WATCH})
        yield Live(url, driver, store_of(tmp_path, models))
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def burst(live: Live, key: str, times: int = 5, gap_s: float = 0.05) -> None:
    for i in range(times):
        if i:
            time.sleep(gap_s)
        live.press(key)


@needs_chromium
def test_a_key_decides_only_a_product_that_was_on_screen_and_a_held_key_decides_it_once(live):
    assert queue_batch(live.url, n=12).status_code == 200
    first = live.sign_in()
    burst(live, "1")  # 5 presses 50 ms apart as the product appears: none of them saw it
    time.sleep(0.6)
    assert len(live.decided()) <= 1 and live.driver.execute_script("return window.keysSeen.length") == 5
    before = live.decided()
    if not before:  # (the usual case) the first product is still on screen, undecided
        assert live.shown() == first
    live.wait(lambda: ready(live.driver))
    shown = live.shown()
    burst(live, "1")  # looked at, then 5 presses 50 ms apart: the first decides it, the next product is not seen
    time.sleep(0.8)
    assert live.decided() == before + [int(shown)]
    second = live.shown()
    assert second != shown and int(second) not in live.decided()
    live.wait(lambda: ready(live.driver))
    live.press("1")  # a held key: one press, then auto-repeats for 0.7 s (past the next product's dwell)
    for _ in range(14):
        time.sleep(0.05)
        live.press("1", repeat=True)
    live.driver.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": "keyUp", "key": "1", "code": "Digit1",
                                                           "windowsVirtualKeyCode": 49})
    time.sleep(0.6)
    seen = live.driver.execute_script("return window.keysSeen")
    assert len(seen) == 25 and sum(repeat for _, repeat in seen) == 14  # every press reached the page
    assert live.decided() == before + [int(shown), int(second)]  # the held key decided its product once
    assert int(live.shown()) not in live.decided()


@needs_chromium
def test_the_status_line_says_what_was_just_decided(live):
    assert queue_batch(live.url, n=12).status_code == 200
    live.sign_in()
    status = lambda: live.driver.execute_script("const s = document.getElementById('status'); "  # noqa: E731
                                                 "return s ? s.textContent : null")
    title = lambda: live.driver.execute_script("return document.querySelector('#product h1').textContent")  # noqa: E731
    assert status() == ""  # a status line, empty before the first decision
    live.wait(lambda: ready(live.driver))
    product, name = live.shown(), title()
    leaf = live.driver.execute_script("return document.querySelector(\"#product li[data-n='1'] .path\")"
                                      ".textContent").split(" > ")[-1]
    live.press("1")
    live.wait(lambda: live.shown() != product)
    assert status() == f"accepted {leaf} for {name}, u to undo"
    live.wait(lambda: ready(live.driver))
    product, name = live.shown(), title()
    live.press("s")
    live.wait(lambda: live.shown() != product)
    assert status() == f"skipped {name}, u to undo"
    live.press("u")
    live.wait(lambda: live.shown() == product)
    assert status() == f"undid the last decision: {name} is back"
    assert live.store.decisions_frame()["action"].tolist() == ["accept", "skip", "undo"]


@needs_chromium
def test_a_long_description_never_pushes_the_suggestions_off_screen(live):
    import base64

    from test_serve import png

    words = "a very long product description that goes on and on about the product " * 60
    long = {"id": 80_000, "title": "dog food item with a long story " * 4, "short_description": words[:4000],
            "name_value_characteristics": " / ".join(f"Property {i}: value {i}" for i in range(30)),
            "photo": base64.b64encode(png(300, 240)).decode()}
    answer = httpx_post(live.url, {"products": [long], "threshold": 1.0, "review": True})
    assert answer.status_code == 200 and len(words[:4000]) == 4000
    assert live.sign_in() == "80000"
    live.wait(lambda: live.driver.execute_script("const i = document.querySelector('#product img'); "
                                                 "return !!(i && i.complete && i.naturalWidth)"))
    for size in ((1366, 768), (800, 700)):
        live.driver.set_window_size(*size)
        time.sleep(0.3)
        width, height = live.viewport()
        for unfolded in (False, True):
            boxes = live.rects("#product ol.suggestions li") + live.rects(".help")
            assert len(boxes) >= 2
            for box in boxes:
                assert box["top"] >= 0 and box["left"] >= 0 and box["h"] > 0, (size, unfolded, box)
                assert box["bottom"] <= height and box["right"] <= width, (size, unfolded, box, width, height)
            desc = live.driver.execute_script("const d = document.querySelector('#product .desc'); "
                                              "return [d.clientHeight, d.scrollHeight]")
            assert (desc[0] >= desc[1] - 1) == unfolded, (size, desc)  # folded to a few lines; d unfolds it
            live.press("d")
            time.sleep(0.2)
    photo = live.rects("#product .product img")[0]
    live.press("p")  # the photo enlarged, and back
    time.sleep(0.2)
    big = live.rects("#product .product img")[0]
    assert big["w"] * big["h"] > 1.5 * photo["w"] * photo["h"]
    live.press("p")
    time.sleep(0.2)
    assert live.rects("#product .product img")[0]["w"] == pytest.approx(photo["w"], abs=1)
    assert live.decided() == []  # d and p decide nothing
    live.driver.set_window_size(1200, 900)
    live.driver.save_screenshot(str(SCREENSHOT.with_name("review_page_long.png")))


def httpx_post(url: str, body: dict):
    import httpx

    return httpx.post(f"{url}/v1/predict", json=body, headers={"X-API-Key": KEY}, timeout=60)


@needs_chromium
def test_the_page_runs_under_a_nonce_content_security_policy(live):
    import re

    import httpx

    assert queue_batch(live.url, n=4).status_code == 200
    with httpx.Client(base_url=live.url, timeout=30) as client:
        form = client.get("/review")
        assert client.post("/review/sign-in", data={"key": "bobkey-0002"}).status_code in (200, 303)
        pages = [client.get("/review") for _ in range(2)]
        api = client.get("/v1/categories?q=dog")
    nonces = []
    for answer in (form, *pages):
        assert answer.status_code == 200
        policy = {d.split()[0]: d.split()[1:] for d in answer.headers["content-security-policy"].split(";")
                  if d.strip()}
        script = policy["script-src"]
        assert len(script) == 1 and re.fullmatch(r"'nonce-[A-Za-z0-9_-]{16,}'", script[0]), policy
        assert "'unsafe-inline'" not in " ".join(policy.get("style-src", []))
        assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'none'"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] in ("no-referrer", "same-origin", "strict-origin")
        nonce = script[0][len("'nonce-"):-1]
        nonces.append(nonce)
        html = answer.text
        assert len(re.findall(r"<script\b", html)) == len(re.findall(rf"<script nonce='{nonce}'>", html))
        assert not re.search(r"<[^>]*\s(style|on[a-z]+)\s*=", html), "an inline style or handler: CSP blocks it"
    assert "id=product" in pages[0].text and len(set(nonces)) == 3  # a fresh nonce per response
    assert api.headers["x-content-type-options"] == "nosniff" and "frame-ancestors 'none'" in \
        api.headers["content-security-policy"]
    live.sign_in()  # the page in the browser, under its policy: every part of the script works
    live.wait(lambda: ready(live.driver))
    widths = live.driver.execute_script("return [...document.querySelectorAll('#product .bar')]"
                                        ".map(b => b.getBoundingClientRect().width)")
    assert widths and max(widths) > 0  # the bars are sized by the script (no style attribute)
    product = live.shown()
    live.press("d")
    live.press("1")
    live.wait(lambda: live.shown() != product)
    assert live.driver.execute_script("return document.getElementById('status').textContent").startswith("accepted ")
    log = [entry["message"] for entry in live.driver.get_log("browser")]
    assert not [m for m in log if "Content Security Policy" in m or "Refused to" in m], log
    assert live.driver.execute_script("return window.cspViolations") == []
    # and the policy is enforced (so the two checks above could see a violation): an inline handler is refused
    live.driver.execute_script("document.body.insertAdjacentHTML('beforeend', "
                               "'<img src=/review/no-such-thing onerror=\"window.injected = 1\">')")
    live.wait(lambda: live.driver.execute_script("return window.cspViolations.length") > 0)
    assert live.driver.execute_script("return window.injected") is None
    assert any("Content Security Policy" in entry["message"] for entry in live.driver.get_log("browser"))


@needs_chromium
def test_a_group_is_decided_with_one_key_a_member_left_out_and_undone_whole(live):
    flagged = queue_group(live.url, 96_000)
    lead = int(live.sign_in())
    members = [int(m) for m in live.driver.execute_script(
        "return [...document.querySelectorAll('#product ol.members li')].map(li => li.dataset.member)")]
    assert sorted([lead, *members]) == sorted(flagged)
    marks = live.driver.execute_script("return [...document.querySelectorAll('#product ol.members mark')]"
                                       ".map(m => m.textContent)")
    assert marks and set(marks) <= {"15", "2.5", "10", "3", "7", "20"}  # the sizes differ, nothing else
    live.wait(lambda: ready(live.driver))
    live.press("x")
    live.press("2")  # x then 2: the second member is left out (no decision yet)
    out = live.driver.execute_script("return [...document.querySelectorAll('#product ol.members li.out')]"
                                     ".map(li => Number(li.dataset.member))")
    assert out == [members[1]] and live.decided() == [] and live.shown() == str(lead)
    live.press("1")  # the whole group but the left-out member
    live.wait(lambda: live.shown() != str(lead))
    assert live.shown() == str(members[1])  # queued alone again: the next product
    status = live.driver.execute_script("return document.getElementById('status').textContent")
    together = sorted(set(flagged) - {members[1]})
    assert status.startswith("accepted ") and status.endswith(f" and {len(together) - 1} similar, u to undo")
    frame = live.store.decisions_frame()
    assert sorted(frame["product_id"]) == together and set(frame["group_id"]) == {lead}
    live.press("u")  # the group's decision undone whole: the lead is back with its member
    live.wait(lambda: live.shown() == str(lead))
    back = live.driver.execute_script("return [...document.querySelectorAll('#product ol.members li')]"
                                      ".map(li => Number(li.dataset.member))")
    assert back == [m for m in members if m != members[1]]  # the excluded member stays alone
    frame = live.store.decisions_frame()
    actions = frame["action"].tolist()  # a member whose model said another leaf: `correct`
    assert actions[0] == "accept" and set(actions[1:len(together)]) <= {"accept", "correct"}
    assert actions[len(together):] == ["undo"] * len(together)
    assert set(frame["group_id"]) == {lead}
    live.driver.save_screenshot(str(SCREENSHOT.with_name("review_page_group.png")))


def test_a_suggestion_by_name_says_so():
    """A zero-shot suggestion (an empty leaf, probability 0: prodcat.models.zero_shot) is marked as one, so the
    reviewer knows no model learned it; the models' suggestions are not."""
    from prodcat.review.page import item_html

    item = {"product_id": 1, "snapshot": {"title": "cheese gouda"}, "suggestions": [[11, 0.6], [13, 0.0]],
            "reason": "flagged", "model_leaf": 11, "confidence": 0.6, "members": []}
    html = item_html(item, lambda leaf: f"Food > {leaf}")
    first, second = html.split("<li data-n=")[1:3]
    assert "by its name" not in first and "by its name" in second
    # a catalogue check's second option is the current label, whose own probability may be 0: not a name
    assert "by its name" not in item_html(item | {"reason": "suspect"}, lambda leaf: f"Food > {leaf}")
