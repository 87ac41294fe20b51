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
from fastapi.testclient import TestClient
from test_serve import KEY, free_port, served, wait_ready  # noqa: F401 - `served` is a fixture

from conftest import REPO
from prodcat.review.items import audit_sample
from prodcat.review.store import ReviewStore
from prodcat.serve.app import create_app

REVIEWERS = "ann annkey-0001\nbob bobkey-0002\n"
SCREENSHOT = REPO / "reports" / "review_page.png"  # looked at after each test run (README shows one)


def queue_batch(client_or_url, n: int = 12, start: int = 50_000, key: str | None = KEY):
    """POST /v1/predict with review: the products under a threshold of 0.999 are flagged."""
    import httpx

    body = {"products": [{"id": start + i, "title": f"{['dog', 'cat'][i % 2]} food item {i}",
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

    return ReviewStore(f"sqlite:///{folder / 'review.db'}", models.name, CategoryTree.from_csv(models / "categories_tree.csv"))


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
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def start_server(models: Path, folder: Path):
    import httpx

    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PRODCAT_API_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "prodcat", "serve", "--models", str(models), "--port", str(port), "--set",
         f"review.reviewers_file={folder / 'reviewers.txt'}", "--set", f"review.url=sqlite:///{folder / 'review.db'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        assert time.time() < deadline and server.poll() is None, "the server did not get ready"
        time.sleep(0.2)


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
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
        body.send_keys("1")  # accept suggestion 1
        second = wait.until(lambda d: shown() != first and shown())
        latency = [driver.execute_script("return window.prodcatShownMs")]
        body.send_keys("/")  # correct through the type-ahead
        box = wait.until(lambda d: d.find_element(By.ID, "q") if d.find_element(By.ID, "q").is_displayed() else None)
        box.send_keys("cat")
        chosen = wait.until(lambda d: d.execute_script("const h = document.querySelector('#hits li'); "
                                                       "return h && h.dataset.id"))
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
