"""The HTTP service under load, end to end over loopback: starts `./run.sh serve` on a free port (or talks to
--url), then measures and prints a table. Bounded in count and time by its flags.

    ./run.sh python bench/bench_serve.py --models DIR --products FILE.parquet [--use full|folds] [--workers N]
        [--single 300] [--batches 20] [--batch-size 500] [--batch-clients 4]
        [--mixed-seconds 60] [--mixed-clients 8] [--malformed 0.05] [--no-reload] [--new-ids]
        [--phases single,batch,mixed,slow] [--slow-clients 300] [--slow-seconds 30] [--slow-requests 200]
        [--client-timeout S]

1. one client, one product per request: median and p99 ms;
2. batches of --batch-size products from --batch-clients clients: products/s;
3. --mixed-clients clients for --mixed-seconds of single products and batches with a share of malformed
   requests: every valid request must succeed and every malformed one be answered 4xx; the service's resident
   memory after the first 1,000 requests and at the end (the server process and its workers);
4. halfway through 3, a reload (POST /v1/reload): the requests around it must not fail;
5. slow clients: --slow-clients connections trickle a request 1 byte/s (half of them a request head, half
   a body after a whole head); how long the server keeps them open (watched for --slow-seconds at most;
   serve.client_timeout_s, or --client-timeout, should close them) and the p50/p95 ms of normal single
   product requests from one client, alone and while all the trickling connections are open.

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
    cmd += ["--set", f"serve.client_timeout_s={args.client_timeout}"] if args.client_timeout else []
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


# -- slow clients -----------------------------------------------------------------------------------------------
SLOW_HEAD = (b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Slow: "
             + b"s" * 4000 + b"\r\n\r\n")  # never complete at 1 byte/s within any sane time-out


def slow_body_head(size: int = 100_000) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()


class Tricklers:
    """`n` connections, each sending a byte a second (half a request head, half a body after its whole head)
    from one thread; when the server closed each (seconds after it connected; None: still open)."""

    def __init__(self, url: str, n: int):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.kinds = ["head" if i % 2 == 0 else "body" for i in range(n)]
        self.socks, self.opened = [], []
        for kind in self.kinds:
            s = socket.create_connection((host, int(port)), timeout=10)
            s.setblocking(False)
            if kind == "body":
                s.send(slow_body_head())
            self.socks.append(s)
            self.opened.append(time.perf_counter())
        self.closed: list[float | None] = [None] * n
        self.answers = [b""] * n
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        """A byte a second on every open connection; in between, wait for the server to answer or close."""
        import selectors

        sel = selectors.DefaultSelector()
        for k, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, k)
        sent, next_byte = 0, time.perf_counter()
        while not self.stop.is_set() and sel.get_map():
            now = time.perf_counter()
            if now >= next_byte:
                for key in list(sel.get_map().values()):
                    k = key.data
                    try:
                        key.fileobj.send(SLOW_HEAD[sent:sent + 1] if self.kinds[k] == "head" else b" ")
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.ended(sel, k)
                sent, next_byte = sent + 1, next_byte + 1.0
                continue
            for key, _ in sel.select(timeout=min(next_byte - now, 0.2)):
                k = key.data
                try:
                    while data := key.fileobj.recv(65536):
                        self.answers[k] += data[:100]
                    self.ended(sel, k)  # the server closed
                except BlockingIOError:
                    pass
                except OSError:
                    self.ended(sel, k)
        sel.close()

    def ended(self, sel, k: int) -> None:
        self.closed[k] = time.perf_counter() - self.opened[k]
        sel.unregister(self.socks[k])
        self.socks[k].close()

    def all_open(self) -> bool:
        return all(c is None for c in self.closed)

    def finish(self, seconds: float) -> None:
        """Wait until every connection is closed or `seconds` after the first opened, then close the rest."""
        self.thread.join(max(0.0, self.opened[0] + seconds - time.perf_counter()))
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def normal_latency(client, url: str, products: list[dict], n: int, go_on=lambda: True) -> dict:
    """Up to `n` single-product requests, one at a time, while `go_on()` holds: p50/p95 ms, count, failures."""
    import httpx

    times, failed = [], 0
    for i in range(n):
        if not go_on():
            break
        body = json.dumps(products[i % len(products)]).encode()
        start = time.perf_counter()
        try:
            ok = client.post(f"{url}/v1/predict", content=body, headers=JSON).status_code == 200
        except httpx.HTTPError:
            ok = False
        times.append((time.perf_counter() - start) * 1000)
        failed += not ok
    if not times:
        return {"p50_ms": None, "p95_ms": None, "n": 0, "failed": failed}
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "n": len(times),
            "failed": failed}


def slow_clients(url: str, products: list[dict], args) -> dict:
    """Phase 5: normal latency alone, then with --slow-clients trickling connections open; how long those
    stay open (at most --slow-seconds watched)."""
    import httpx

    out = {}
    with httpx.Client(timeout=args.timeout) as client:
        normal_latency(client, url, products[-20:], 20)  # warm-up
        alone = normal_latency(client, url, products, args.slow_requests)
        out |= {f"normal_{k}_alone": v for k, v in alone.items()}
        opening = time.perf_counter()
        trickling = Tricklers(url, args.slow_clients)
        out["slow_clients"] = args.slow_clients
        out["slow_open_all_s"] = time.perf_counter() - opening
        time.sleep(1.0)  # every connection has sent something
        during = normal_latency(client, url, products, args.slow_requests, go_on=trickling.all_open)
        out |= {f"normal_{k}_with_slow": v for k, v in during.items()}
    trickling.finish(args.slow_seconds)
    for kind in ("head", "body"):
        closed = [c for c, k in zip(trickling.closed, trickling.kinds) if k == kind and c is not None]
        total = trickling.kinds.count(kind)
        out[f"slow_{kind}_closed"] = f"{len(closed)}/{total}"
        out[f"slow_{kind}_open_s_median"] = float(np.median(closed)) if closed else f">{args.slow_seconds:g}"
        out[f"slow_{kind}_open_s_max"] = (float(max(closed)) if len(closed) == total
                                          else f">{args.slow_seconds:g}")
    out["slow_answered_408"] = sum(a.startswith(b"HTTP/1.1 408") for a in trickling.answers)
    return out


TARGETS = {  # the bars (uhtt_ke, this 2-core machine); the table says where a figure is against them
    "single_median_ms": ("<=", 30), "single_p99_ms": ("<=", 100), "batch_products_per_s": (">=", 1500),
    "mixed_valid_failed": ("<=", 0), "mixed_malformed_not_4xx": ("<=", 0), "failed_during_reload": ("<=", 0),
    "slow_head_open_s_max": ("<=", 15), "slow_body_open_s_max": ("<=", 15), "normal_failed_with_slow": ("<=", 0)}


def table(results: dict) -> str:
    rows = []
    for key, value in results.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        target = TARGETS.get(key)
        verdict = ""
        if target is not None and isinstance(value, str) and value.startswith(">") and target[0] == "<=":
            verdict = f"{target[0]} {target[1]:,}: NOT met"  # still open when the watch ended
        elif target is not None and isinstance(value, (int, float)):
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
    p.add_argument("--phases", default="single,batch,mixed,slow",
                   help="which of the phases to run, comma-separated: single, batch, mixed (with its reload), slow")
    p.add_argument("--slow-clients", type=int, default=300, help="trickling connections of the slow phase")
    p.add_argument("--slow-seconds", type=float, default=30, help="the slow connections are watched this long at most")
    p.add_argument("--slow-requests", type=int, default=200, help="normal requests alone and with the slow clients")
    p.add_argument("--client-timeout", type=float, help="serve.client_timeout_s of the started service "
                   "(default: the setting's)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one request may take")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds the server may take to load")
    p.add_argument("--server-log", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_serve_server.log"))
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if not args.url and not args.models:
        p.error("give --models DIR (or --url of a running service)")
    args.phases = {name.strip() for name in args.phases.split(",") if name.strip()}
    unknown = args.phases - {"single", "batch", "mixed", "slow"}
    if unknown:
        p.error(f"--phases: unknown {', '.join(sorted(unknown))} (single, batch, mixed, slow)")
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
            if "single" in args.phases:
                single_latency(client, url, products[-20:], 20)  # warm-up
                results |= single_latency(client, url, products, args.single)
        if "batch" in args.phases:
            results |= batch_throughput(url, products, args.batches, args.batch_size, args.batch_clients,
                                        args.timeout)
        if "mixed" in args.phases:
            results |= mixed_load(url, products, args, server.pid if server else None, key)
        if "slow" in args.phases:
            results |= slow_clients(url, products, args)
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
