"""How fast the reviewer's page lets a person work: the time from a key press to the next product shown, in
headless Chromium against a real service of the given models. Measures and prints.

    ./run.sh python bench/bench_review_page.py --models /tmp/uhtt/models/uhtt_ke \
        --products ../shared/data/uhtt_ke/test.parquet [--n 40] [--screenshot docs/review_page.png]

The service gets a fresh review store in a temp folder; --n products are queued through POST /v1/predict
(review: true, threshold 1: all but the certain ones are flagged); the reviewer takes suggestion 1 for each
(key `1`) until the queue is empty.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

KEY = "bench-api-key-0001"


def start(models: str, folder: Path):
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "reviewers.txt").write_text("bench bench-reviewer-key\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "prodcat", "serve", "--models", models, "--port", str(port), "--use", "full",
         "--set", f"review.reviewers_file={folder / 'reviewers.txt'}",
         "--set", f"review.url=sqlite:///{folder / 'review.db'}"],
        env=os.environ | {"PRODCAT_API_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    sys.exit("the service did not get ready")


def main() -> None:
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_review_page import browser

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--products", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--screenshot", default=None)
    args = ap.parse_args()
    frame = pd.read_parquet(args.products).sample(args.n, random_state=0)
    products = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()
                 if k in ("id", "title", "short_description", "name_value_characteristics", "rating",
                          "feedback_quantity")} for row in frame.to_dict("records")]
    server, url = start(args.models, Path(tempfile.mkdtemp(prefix="bench_review_page-")))
    driver = browser()
    try:
        answer = httpx.post(f"{url}/v1/predict", json={"products": products, "threshold": 1.0, "review": True},
                            headers={"X-API-Key": KEY}, timeout=120)
        answer.raise_for_status()
        driver.get(f"{url}/review")
        driver.find_element(By.NAME, "key").send_keys("bench-reviewer-key\n")
        wait = WebDriverWait(driver, 30)

        def shown():
            return driver.execute_script("const p = document.getElementById('product'); return p && p.dataset.id")

        current = wait.until(lambda d: shown())
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
        times = []
        body = driver.find_element(By.TAG_NAME, "body")
        ready = ("const p = document.getElementById('product'); "
                 "return !p || p.classList.contains('ready')")  # on screen for review.dwell_ms: keys decide it
        while current is not None:  # until the queue is empty (a product without suggestions: skipped)
            wait.until(lambda d: d.execute_script(ready))
            has_one = driver.execute_script("return !!document.querySelector(\"#product li[data-n='1']\")")
            body.send_keys("1" if has_one else "s")
            wait.until(lambda d, before=current: shown() != before)
            current = shown()
            times.append(driver.execute_script("return window.prodcatShownMs"))
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"{len(times)} decisions with key 1 on {args.models}: key press -> next product shown median "
          f"{np.median(times):.0f} ms, p95 {np.percentile(times, 95):.0f} ms, max {max(times):.0f} ms")


if __name__ == "__main__":
    main()
