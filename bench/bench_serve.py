"""The HTTP service under load, end to end over loopback: starts `./run.sh serve` on a free port (or talks to
--url), then measures and prints a table. Bounded in count and time by its flags.

    ./run.sh python bench/bench_serve.py --models DIR --products FILE.parquet [--use full|folds] [--workers N]
        [--single 300] [--batches 20] [--batch-size 500] [--batch-clients 4]
        [--mixed-seconds 60] [--mixed-clients 8] [--malformed 0.05] [--no-reload] [--new-ids]

1. one client, one product per request: median and p99 ms;
2. batches of --batch-size products from --batch-clients clients: products/s;
3. --mixed-clients clients for --mixed-seconds of single products and batches with a share of malformed
   requests: every valid request must succeed and every malformed one be answered 4xx; the service's resident
   memory after the first 1,000 requests and at the end (the server process and its workers);
4. halfway through 3, a reload (POST /v1/reload): the requests around it must not fail.

PRODUCTS: any parquet in the task's layout (category_id, if present, is dropped), e.g. a dataset's
test.parquet; --new-ids gives them ids past every training id (tomorrow's products).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
JSON = {"content-type": "application/json"}


def products_of(path: str, new_ids: bool) -> list[dict]:
    frame = pd.read_parquet(path).drop(columns=["category_id"], errors="ignore")
    if new_ids:
        frame["id"] = np.arange(len(frame), dtype=np.int64) + 10**12
    records = json.loads(frame.to_json(orient="records"))  # NaN -> null
    return [{k: v for k, v in r.items() if v is not None} for r in records]


# -- the server -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, key: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    limit = max(1000, args.batch_size)
    cmd = [sys.executable, "-m", "prodcat", "serve", "--models", args.models, "--port", str(port),
           "--set", f"serve.max_batch_items={limit}"]
    cmd += (["--use", args.use] if args.use else []) + (["--workers", str(args.workers)] if args.workers else [])
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PRODCAT_API_KEY": key}
    log = open(args.server_log, "w")  # noqa: SIM115 - open while the server runs
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


def wait_ready(client, url: str, server, seconds: float) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if server is not None and server.poll() is not None:
            sys.exit(f"the server stopped (exit code {server.returncode}); see its log")
        try:
            if client.get(f"{url}/health/ready").status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"the server was not ready after {seconds:.0f} s")


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of the server process and its workers, MB."""
    if pid is None:
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except psutil.Error:
        return None


# -- the measurements -----------------------------------------------------------------------------------------
def single_latency(client, url: str, products: list[dict], n: int) -> dict:
    times = []
    for i in range(n):
        body = json.dumps(products[i % len(products)]).encode()
        start = time.perf_counter()
        response = client.post(f"{url}/v1/predict", content=body, headers=JSON)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return {"single_median_ms": float(np.median(times)), "single_p99_ms": float(np.percentile(times, 99)),
            "single_n": len(times)}


def batch_throughput(url: str, products: list[dict], n_batches: int, size: int, clients: int, timeout: float) -> dict:
    import httpx

    bodies = [json.dumps({"products": products[(i * size) % len(products):][:size]}).encode() for i in range(n_batches)]
    counts, lock, todo = [0, 0], threading.Lock(), list(range(n_batches))

    def work():
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                response = client.post(f"{url}/v1/predict", content=bodies[i], headers=JSON)
                with lock:
                    counts[response.status_code != 200] += len(json.loads(bodies[i])["products"])

    start = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {"batch_products_per_s": counts[0] / seconds, "batch_products": counts[0],
            "batch_failed_products": counts[1], "batch_seconds": seconds}


def malformed_request(rng: random.Random, product: dict) -> tuple[bytes, str]:
    """A request a client gets wrong, and what is wrong with it."""
    kind = rng.choice(["broken JSON", "wrong type", "missing id", "unknown field", "empty batch", "not an image"])
    body = {"broken JSON": b'{"id": 1, "title": "x",', "wrong type": {**product, "rating": "five stars"},
            "missing id": {k: v for k, v in product.items() if k != "id"}, "unknown field": {**product, "tittle": "x"},
            "empty batch": {"products": []}, "not an image": {**product, "photo": "bm90IGFuIGltYWdl"}}[kind]
    return body if isinstance(body, bytes) else json.dumps(body).encode(), kind


@dataclass
class Mixed:
    """What the clients of the mixed phase saw."""

    valid_ok: int = 0
    valid_failed: list = field(default_factory=list)  # (when, status or error)
    malformed_4xx: int = 0
    malformed_other: list = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def mixed_client(url: str, products: list[dict], until: float, seed: int, args, out: Mixed, on_count) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(timeout=args.timeout) as client:
        while time.perf_counter() < until:
            product = products[rng.randrange(len(products))]
            malformed = rng.random() < args.malformed
            if malformed:
                body, _ = malformed_request(rng, product)
            elif rng.random() < 0.8:
                body = json.dumps(product).encode()
            else:
                start = rng.randrange(len(products))
                body = json.dumps({"products": products[start:start + rng.randint(20, args.batch_size)]}).encode()
            sent = time.perf_counter()
            try:
                status = client.post(f"{url}/v1/predict", content=body, headers=JSON).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with out.lock:
                out.requests += 1
                if malformed:
                    out.malformed_4xx += isinstance(status, int) and 400 <= status < 500
                    if not (isinstance(status, int) and 400 <= status < 500):
                        out.malformed_other.append((sent, status))
                elif status == 200:
                    out.valid_ok += 1
                else:
                    out.valid_failed.append((sent, status))
            on_count(out.requests)


def mixed_load(url: str, products: list[dict], args, pid: int | None, key: str | None) -> dict:
    """--mixed-clients clients for --mixed-seconds; the memory after the first 1,000 requests and at the end;
    a reload halfway (unless --no-reload)."""
    import httpx

    out, rss_early = Mixed(), []

    def on_count(n: int) -> None:
        if n == 1000 and not rss_early:
            rss_early.append(rss_mb(pid))

    until = time.perf_counter() + args.mixed_seconds
    clients = [threading.Thread(target=mixed_client, args=(url, products, until, seed, args, out, on_count))
               for seed in range(args.mixed_clients)]
    for t in clients:
        t.start()
    reload = {}
    if not args.no_reload:
        time.sleep(args.mixed_seconds / 2)
        start = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            answer = client.post(f"{url}/v1/reload", headers={"X-API-Key": key or ""})
        reload = {"reload_status": answer.status_code, "reload_s": time.perf_counter() - start,
                  "reload_window": (start, time.perf_counter() + 1.0)}
    for t in clients:
        t.join()
    result = {"mixed_requests": out.requests, "mixed_valid_ok": out.valid_ok,
              "mixed_valid_failed": len(out.valid_failed), "mixed_malformed_4xx": out.malformed_4xx,
              "mixed_malformed_not_4xx": len(out.malformed_other), "rss_after_1000_mb": (rss_early or [None])[0],
              "rss_end_mb": rss_mb(pid), "failures_seen": sorted({str(s) for _, s in out.valid_failed})[:5]}
    if reload:
        low, high = reload.pop("reload_window")
        result |= reload | {"failed_during_reload": sum(low <= t <= high for t, _ in out.valid_failed)}
    return result


TARGETS = {  # the bars (uhtt_ke, this 2-core machine); the table says where a figure is against them
    "single_median_ms": ("<=", 30), "single_p99_ms": ("<=", 100), "batch_products_per_s": (">=", 1500),
    "mixed_valid_failed": ("<=", 0), "mixed_malformed_not_4xx": ("<=", 0), "failed_during_reload": ("<=", 0)}


def table(results: dict) -> str:
    rows = []
    for key, value in results.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        target = TARGETS.get(key)
        verdict = ""
        if target is not None and isinstance(value, (int, float)):
            ok = value <= target[1] if target[0] == "<=" else value >= target[1]
            verdict = f"{target[0]} {target[1]:,}: {'met' if ok else 'NOT met'}"
        rows.append((key, shown, verdict))
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>14}  {t}" for k, v, t in rows)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="saved models folder (models/<dataset>/); not needed with --url")
    p.add_argument("--products", required=True, help="parquet of products (e.g. a dataset's test.parquet)")
    p.add_argument("--url", help="a running service instead of starting one (memory is not measured then)")
    p.add_argument("--api-key", default=os.environ.get("PRODCAT_API_KEY"), help="with --url: for the reload")
    p.add_argument("--use", choices=("full", "folds"), help="default: the serve.use setting")
    p.add_argument("--workers", type=int, help="default: the serve.workers setting")
    p.add_argument("--single", type=int, default=300, help="single-product requests of phase 1")
    p.add_argument("--batches", type=int, default=20, help="batches of phase 2")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--batch-clients", type=int, default=4)
    p.add_argument("--mixed-seconds", type=float, default=60)
    p.add_argument("--mixed-clients", type=int, default=8)
    p.add_argument("--malformed", type=float, default=0.05, help="share of malformed requests in phase 3")
    p.add_argument("--no-reload", action="store_true", help="no reload during phase 3")
    p.add_argument("--new-ids", action="store_true", help="ids past every training id (tomorrow's products)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds the server may take to load")
    p.add_argument("--server-log", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_serve_server.log"))
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if not args.url and not args.models:
        p.error("give --models DIR (or --url of a running service)")
    return args


def main() -> None:
    import httpx

    args = parse_args()
    products = products_of(args.products, args.new_ids)
    key = args.api_key if args.url else secrets.token_hex(16)
    server, url = (None, args.url.rstrip("/")) if args.url else start_server(args, key)
    results = {"products_in_file": len(products)}
    try:
        with httpx.Client(timeout=args.timeout) as client:
            results["ready_after_s"] = wait_ready(client, url, server, args.ready_timeout)
            info = client.get(f"{url}/v1/info").json()
            results |= {"use": info["use"], "workers": args.workers or "serve.workers",
                        "model_version": info["model_version"]}
            results["rss_loaded_mb"] = rss_mb(server.pid if server else None)
            single_latency(client, url, products[-20:], 20)  # warm-up
            results |= single_latency(client, url, products, args.single)
        results |= batch_throughput(url, products, args.batches, args.batch_size, args.batch_clients, args.timeout)
        results |= mixed_load(url, products, args, server.pid if server else None, key)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if server is not None:
        print(f"(server log: {args.server_log})")


if __name__ == "__main__":
    main()
