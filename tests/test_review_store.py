"""The review store (prodcat.review): queue order, claims, idempotent decisions, undo, the audit sample, the
export, decisions by normalised text, bad input, 4 concurrent writer processes, kill -9, and the `review`
commands. The store tests run on SQLite and on a real PostgreSQL server started for the session (skipped,
with the reason, where PostgreSQL is not installed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, TREE, products
from pg_server import PostgresServer, free_port

from prodcat.cli import main
from prodcat.data.tree import CategoryTree
from prodcat.errors import DataError
from prodcat.review.db import Conflict, StoreError
from prodcat.review.items import ORDER_SALT, QueueItem, audit_sample, snapshots, text_keys, unit_hash
from prodcat.review.queue import queue_predictions
from prodcat.review.schema import AUDIT, FLAGGED
from prodcat.review.store import ReviewStore

TREE_OBJ = CategoryTree.from_frame(TREE)  # leaves 11, 12, 21, 23, 24; 10, 20, 22 are inner categories
LEAVES = [11, 12, 21, 23, 24]


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer.start()
    yield server
    if server is not None:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A fresh, empty store's URL: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review' / 'review.db'}"
    server = request.getfixturevalue("postgres")
    if server is None:
        pytest.skip(f"PostgreSQL review-store tests skipped: {PostgresServer.why_not}")
    return server.new_database()


@pytest.fixture
def open_store(url):
    """open_store() opens the fresh store (open_store("other"): another dataset in it; tree=None: without
    the tree); every store opened is closed after the test."""
    made = []

    def make(dataset: str = "tiny", tree=TREE_OBJ):
        made.append(ReviewStore(url, dataset, tree))
        return made[-1]

    yield make
    for s in made:
        s.close()


def catalogue(n: int, start: int = 1000) -> pd.DataFrame:
    """Labelled products with distinct texts."""
    p = products(n, start_id=start)
    p["title"] = p["title"] + " n" + p["id"].astype(str)
    return p


def queue_items(p: pd.DataFrame, conf=None, reason: str = FLAGGED) -> list[QueueItem]:
    """Items whose model leaf is the product's label, with `conf` (default: spread over 0.05-0.9)."""
    conf = np.linspace(0.05, 0.9, len(p)) if conf is None else conf
    return [QueueItem(int(i), s, [(int(c), float(x or 0)), (12, 0.05)], int(c), x, "v1", reason)
            for i, s, c, x in zip(p["id"], snapshots(p), p["category_id"], conf)]


def test_queue_serves_lowest_confidence_first_and_never_twice(open_store):
    store = open_store()
    p = catalogue(7)
    items = queue_items(p.iloc[:6], [0.5, 0.1, 0.9, 0.3, 0.7, None])
    items += queue_items(p.iloc[6:], [0.99], reason=AUDIT)  # an audit product: placed by a hash of its id
    assert store.enqueue(items) == 7
    assert store.enqueue(items) == 0  # already queued: not queued twice
    assert store.enqueue(queue_items(catalogue(2, start=1006))) == 1  # 1006 is queued, 1007 is new
    expected = sorted(items + [QueueItem(1007, {}, confidence=0.9)], key=lambda i: (i.priority, i.product_id))
    assert items[-1].priority == pytest.approx(unit_hash([1006], ORDER_SALT)[0])
    served = [store.claim_next(f"r{k}")["product_id"] for k in range(8)]
    assert served == [i.product_id for i in expected]
    assert served[0] == 1005  # no prediction (confidence None): first
    assert store.claim_next("someone else") is None
    other = open_store("other")  # another dataset in the same database: its own queue
    assert other.enqueue(queue_items(catalogue(3), [0.1, 0.2, 0.3])) == 3
    first = other.claim_next("ann")
    other.decide(first["product_id"], None, "skip", "ann", "skip-1")
    assert other.counters()["skipped"] == 1
    order = []
    while (item := other.claim_next("ann")) is not None:
        order.append(item["product_id"])
        other.decide(item["product_id"], None, "accept", "ann", f"a-{item['product_id']}")
    assert order == [1001, 1002, 1000]  # the skipped product comes after the others


def test_claims_are_exclusive_renewed_for_their_holder_and_expire(open_store):
    store = open_store()
    store.enqueue(queue_items(catalogue(20)))
    a, b = store.claim_next("ann"), store.claim_next("bob")
    assert a["product_id"] != b["product_id"]
    assert store.claim_next("ann")["product_id"] == a["product_id"]  # a reloaded page: the same product
    c = store.claim_next("carl", ttl_s=0.3)
    time.sleep(0.6)
    d = store.claim_next("dave")
    assert d["product_id"] == c["product_id"]  # carl's claim expired: given again
    with pytest.raises(Conflict, match="held by reviewer 'dave'"):
        store.decide(c["product_id"], 11, "correct", "carl", "late")
    assert store.decide(c["product_id"], 11, "correct", "dave", "dave-1")["reviewer"] == "dave"

    got, stores = [], [open_store() for _ in range(8)]
    threads = [threading.Thread(target=lambda s=s, k=k: got.append(s.claim_next(f"t{k}")["product_id"]))
               for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = {a["product_id"], b["product_id"], c["product_id"]}
    assert len(got) == 8 and len(set(got)) == 8 and not set(got) & held  # 8 at once, 8 different products


def test_a_double_submit_stores_one_decision(open_store):
    store = open_store()
    store.enqueue(queue_items(catalogue(5)))
    first = store.decide(1000, 21, "correct", "ann", "key-1")
    again = store.decide(1000, 21, "correct", "ann", "key-1")
    assert again["id"] == first["id"] and again["chosen_leaf"] == 21
    results = []
    workers = [threading.Thread(target=lambda fresh=fresh: results.append(
        fresh.decide(1001, 12, "correct", "bob", "key-2")["id"])) for fresh in [open_store() for _ in range(4)]]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1  # 4 submits at once: one decision
    frame = store.decisions_frame()
    assert len(frame) == 2 and frame["idempotency_key"].tolist() == ["key-1", "key-2"]
    with pytest.raises(Conflict, match="key-1' was already used"):
        store.decide(1002, 11, "correct", "ann", "key-1")
    with pytest.raises(Conflict, match="already decided"):
        store.decide(1000, 11, "correct", "ann", "key-3")


def test_undo_returns_the_product_and_keeps_the_record(open_store):
    store = open_store()
    store.enqueue(queue_items(catalogue(4)))
    store.decide(1000, 21, "correct", "ann", "d1")
    store.decide(1001, None, "accept", "ann", "d2")
    before = store.decisions_frame()
    undo = store.undo("ann", "u1")
    assert undo["action"] == "undo" and undo["undoes"] == before["id"].iloc[1]
    assert store.undo("ann", "u1")["id"] == undo["id"]  # the same key again: the same undo, nothing more
    item = store.item(1001)
    assert item["decision_id"] is None and item["claimed_by"] == "ann"
    assert store.claim_next("ann")["product_id"] == 1001  # the undone product comes back first
    assert store.claim_next("bob")["product_id"] != 1001
    store.undo("ann", "u2")  # the one before: 1000
    assert store.claim_next("ann")["product_id"] == 1000
    store.decide(1000, 24, "correct", "ann", "d3")
    after = store.decisions_frame()
    kept = [c for c in before.columns if c != "undoes"]  # append-only: the first rows are unchanged
    assert after.iloc[:2][kept].to_dict("records") == before[kept].to_dict("records")
    assert after["action"].tolist() == ["correct", "accept", "undo", "undo", "correct"]
    assert store.export_training_rows()[["id", "category_id"]].values.tolist() == [[1000, 24]]
    with pytest.raises(Conflict, match="no decision to undo"):
        store.undo("nobody", "u3")
    store.decide(1003, None, "skip", "carl", "s1")  # (bob holds 1002)
    assert store.item(1003)["skips"] == 1
    store.undo("carl", "u4")
    assert store.item(1003)["skips"] == 0 and store.item(1003)["claimed_by"] == "carl"


def test_audit_sample_is_reproducible_and_counted(open_store):
    ids = np.arange(200_000)
    picked = audit_sample(ids, 0.02)
    assert abs(picked.mean() - 0.02) < 0.002 and (audit_sample(ids, 0.02) == picked).all()
    assert not (audit_sample(ids, 0.01) & ~picked).any()  # a smaller share: a subset of the same products
    p = catalogue(400)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, len(p)).astype(np.float32)
    table = pd.DataFrame({"id": p["id"], "predicted_category_id": p["category_id"], "confidence": conf,
                          "category_path": "", "top1_category_id": p["category_id"], "top1_probability": conf,
                          "top2_category_id": -1, "top2_probability": 0.0, "prediction_kind": "all models",
                          "needs_review": conf < 0.6})
    store = open_store()
    counts = queue_predictions(store, table, p, 0.25, "v2")
    audit = ~table["needs_review"].to_numpy() & audit_sample(p["id"], 0.25)
    assert counts.pop("grouped") > 0  # (the catalogue's titles are near-duplicates)
    assert counts == {"flagged": int((conf < 0.6).sum()), "audit": int(audit.sum()),
                      "added": int((conf < 0.6).sum() + audit.sum())}
    assert queue_predictions(store, table, p, 0.25, "v2")["added"] == 0
    k = int(np.argmax(conf < 0.6))  # the first flagged product
    first = store.item(int(p["id"].iloc[k]))
    assert first["suggestions"] == [[int(p["category_id"].iloc[k]), pytest.approx(float(conf[k]))]]  # no -1
    audit_ids = p["id"].to_numpy()[audit]
    for k, pid in enumerate(audit_ids.tolist()):  # every third audit product was wrong
        leaf = int(p.set_index("id").at[pid, "category_id"])
        store.decide(pid, None if k % 3 else next(x for x in LEAVES if x != leaf), "accept" if k % 3 else "correct",
                     "ann", f"a{pid}")
    c = store.counters()
    right = sum(1 for k in range(len(audit_ids)) if k % 3)
    assert c["audit_decided"] == len(audit_ids) and c["audit_precision"] == pytest.approx(right / len(audit_ids))
    assert c["done"] == len(audit_ids) and c["left"] == counts["added"] - len(audit_ids)
    assert c["suggestion1_accepted"] == right


def test_export_is_the_train_layout_with_the_latest_standing_decision(open_store):
    from prodcat.data.dataset import TRAIN_COLUMNS, validate_products

    store = open_store()
    p = catalogue(5)
    store.enqueue(queue_items(p))
    store.decide(1000, 21, "correct", "ann", "k1")
    store.decide(1001, None, "accept", "ann", "k2")
    store.decide(1002, None, "skip", "ann", "k3")
    store.decide(1003, 23, "correct", "bob", "k4")
    store.undo("bob", "k5")
    store.decide(1003, 24, "correct", "bob", "k6")  # the latest standing decision wins
    store.decide(1004, 11, "correct", "carl", "k7")
    store.undo("carl", "k8")  # undone: not exported
    out = store.export_training_rows()
    assert list(out.columns) == list(TRAIN_COLUMNS)
    assert out["id"].tolist() == [1000, 1001, 1003]
    assert out["category_id"].tolist() == [21, int(p["category_id"].iloc[1]), 24]
    assert out["id"].dtype == np.int64 and out["category_id"].dtype == np.int64 and out["rating"].dtype == float
    want = p.set_index("id").loc[[1000, 1001, 1003], list(TRAIN_COLUMNS[1:-1])].reset_index()
    pd.testing.assert_frame_equal(out.drop(columns="category_id"), validate_products(want))  # the same fields


def test_a_decided_text_is_answered_and_never_queued_again(open_store):
    store = open_store()
    none = {"short_description": None, "name_value_characteristics": None}
    first, same = {"title": "Молоко <b>Домик</b> 1,5 л"} | none, {"title": "молоко   домик 1.5л"} | none
    assert text_keys([first, same])[0] == text_keys([first, same])[1]
    assert text_keys([{"title": "", "short_description": None}]) == [None]  # no text: matches nothing
    store.enqueue([QueueItem(1, first, [(12, 0.4)], 12, 0.4, "v1")])
    key = store.item(1)["text_key"]
    assert store.decided_leaf(key) is None
    store.decide(1, 11, "correct", "ann", "k1")
    assert store.decided_leaf(key)["chosen_leaf"] == 11
    assert store.decided_leaves([key, "unknown"]).keys() == {key}
    assert store.enqueue([QueueItem(2, same, [(12, 0.4)], 12, 0.4, "v1")]) == 0  # answered by the decision
    store.undo("ann", "k2")
    assert store.decided_leaf(key) is None
    assert store.enqueue([QueueItem(2, same, [(12, 0.4)], 12, 0.4, "v1")]) == 1


def test_bad_decisions_are_refused_with_a_message(open_store):
    store = open_store()
    store.enqueue(queue_items(catalogue(2)))
    for leaf, message in ((20, r"category 20 \(Pets\) is not a leaf"), (999, "999 is not a category"),
                          ("abc", "'abc' is not a category id")):
        with pytest.raises(DataError, match=message):
            store.decide(1000, leaf, "correct", "ann", f"bad-{leaf}")
    with pytest.raises(DataError, match="product 77 is not in the review queue of tiny"):
        store.decide(77, 11, "correct", "ann", "k77")
    with pytest.raises(DataError, match="action 'maybe' is not allowed"):
        store.decide(1000, 11, "maybe", "ann", "k")
    with pytest.raises(DataError, match="reviewer must be a non-empty string"):
        store.decide(1000, 11, "correct", " ", "k")
    with pytest.raises(DataError, match="without the category tree"):
        open_store(tree=None).decide(1000, 11, "correct", "ann", "k")
    assert store.decisions_frame().empty  # nothing was written


def test_unusable_databases_are_one_message_naming_the_url(tmp_path):
    (tmp_path / "file").write_text("x")
    port = free_port()
    cases = [("mysql://u@h/db", "unsupported database 'mysql'"), ("nonsense", "not a usable database URL"),
             ("sqlite://", "give a file"), (f"sqlite:///{tmp_path}/file/review.db", "cannot make the folder"),
             (f"postgresql+psycopg://ann:secret@127.0.0.1:{port}/db", f"127.0.0.1:{port}")]
    for url, message in cases:
        with pytest.raises(StoreError, match=message) as info:
            ReviewStore(url, "tiny")
        assert "secret" not in str(info.value) and "\n" not in str(info.value)
    assert "ann:***@" in str(info.value)
    ReviewStore(f"sqlite:///{tmp_path}/ro.db", "tiny").close()  # made, then opened read-only
    with pytest.raises(StoreError, match="readonly"):
        ReviewStore(f"sqlite:///file:{tmp_path}/ro.db?mode=ro&uri=true", "tiny").enqueue(queue_items(catalogue(1)))
    r = CliRunner().invoke(main, ["review", "status", "--data", str(tmp_path), "--set",
                                  f"review.url=postgresql+psycopg://ann:secret@127.0.0.1:{port}/db"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "secret" not in r.output
    assert r.output.startswith("Error: review store postgresql+psycopg://ann:***@127.0.0.1") and \
        len(r.output.strip().splitlines()) == 1


WRITER = r"""
import sys, time
from prodcat.data.tree import CategoryTree
from prodcat.review.store import ReviewStore

url, tree_csv, name, limit, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
store = ReviewStore(url, "tiny", CategoryTree.from_csv(tree_csv))
leaves = [11, 12, 21, 23, 24]
print("#start", time.time(), flush=True)
n = 0
while n < limit and (item := store.claim_next(name, ttl_s=ttl)) is not None:
    pid = item["product_id"]
    key = f"{name}:{pid}"
    leaf = leaves[pid % 5]
    decision = store.decide(pid, leaf, "accept" if leaf == item["model_leaf"] else "correct", name, key)
    if n % 100 == 0:  # a double submit: the same decision comes back
        assert store.decide(pid, leaf, "correct", name, key)["id"] == decision["id"]
    print(key, flush=True)  # acknowledged: the decision is committed
    n += 1
print("#end", time.time(), flush=True)
"""


def writer(url: str, tmp_path, name: str, limit: int = 10**9, ttl: float = 600) -> subprocess.Popen:
    tree_csv = tmp_path / "tree.csv"
    TREE.to_csv(tree_csv, index=False)
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(tree_csv), name, str(limit), str(ttl)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_four_concurrent_writers_lose_and_duplicate_no_decision(open_store, url, tmp_path):
    """2,000 decisions here; docs/reviewing.md's measurement: PRODCAT_STORE_WRITES=10000 ./run.sh test
    tests/test_review_store.py -k four -s (prints the throughput)."""
    store = open_store()
    n = int(os.environ.get("PRODCAT_STORE_WRITES", 2000))
    assert store.enqueue(queue_items(catalogue(n), np.random.default_rng(1).uniform(0, 1, n))) == n
    procs = [writer(url, tmp_path, f"w{k}") for k in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    lines = [ln.split() for out, _ in outputs for ln in out.splitlines()]
    acked = [ln[0] for ln in lines if not ln[0].startswith("#")]
    start = min(float(ln[1]) for ln in lines if ln[0] == "#start")
    end = max(float(ln[1]) for ln in lines if ln[0] == "#end")
    frame = store.decisions_frame()
    assert len(acked) == n and len(set(acked)) == n
    assert len(frame) == n and frame["product_id"].nunique() == n and set(frame["idempotency_key"]) == set(acked)
    counters = store.counters()
    assert counters["done"] == n and counters["left"] == 0
    per_writer = {k: sum(a.startswith(f"w{k}:") for a in acked) for k in range(4)}
    print(f"\n[review store] {url.split(':')[0]}: {n} decisions (claim + decide, one transaction each) by 4 "
          f"processes in {end - start:.1f}s: {n / (end - start):.0f} decisions/s; per writer {per_writer}")


def test_kill_9_loses_no_acknowledged_decision(open_store, url, tmp_path):
    # more products than the pipe's 64 KB of acknowledgements can hold: the writer cannot run out of work
    # (and exit on its own) while this process, starved of CPU, has not yet read its first 300 lines
    n = 10_000
    store = open_store()
    store.enqueue(queue_items(catalogue(n)))
    proc = writer(url, tmp_path, "victim", ttl=1.0)
    acked = []
    for line in proc.stdout:
        if not line.startswith("#"):
            acked.append(line.strip())
        if len(acked) >= 300:
            break
    proc.send_signal(signal.SIGKILL)  # in the middle of its next claim or decision
    rest, _ = proc.communicate()
    acked += [ln for ln in rest.splitlines() if ln and not ln.startswith("#")]
    assert proc.returncode == -signal.SIGKILL and 300 <= len(acked) < n
    stored = set(open_store().decisions_frame()["idempotency_key"])
    assert set(acked) <= stored and len(stored) - len(acked) <= 1  # at most the decision being written
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    time.sleep(1.2)  # the killed writer's claim expires: its product is served again
    left = store.counters()["left"]
    assert left == n - len(stored) and store.claim_next("next") is not None


def test_review_commands_add_status_export(trained, tmp_path):
    from prodcat.data.dataset import TRAIN_COLUMNS, read_products
    from prodcat.review.queue import open_store
    from prodcat.training.run import settings_and_paths

    common, models, _ = trained
    data = tmp_path / "tiny"
    args = [str(a) for a in common]
    new = tmp_path / "new.parquet"  # tomorrow's products: ids past every training and test id
    pd.read_parquet(data / "test.parquet").assign(id=lambda d: d["id"] + 10**6).to_parquet(new, index=False)
    apart = ["--set", "review.group_similarity=null"]  # one product, one decision (groups: test_review_page)
    r = CliRunner().invoke(main, ["review", "add", "--input", str(new), *args, *apart])
    assert r.exit_code == 0, r.output
    assert "30 products:" in r.output and "added to the queue" in r.output
    store = open_store(*settings_and_paths(common[1], common[3], common[5]), TREE_OBJ)
    left = store.counters()["left"]
    assert left > 0 and str(tmp_path / "w" / "review" / "tiny" / "review.db") in r.output
    pred = tmp_path / "pred.parquet"
    r = CliRunner().invoke(main, ["predict", "--input", str(new), "--out", str(pred),
                                  "--min-precision", "0.98", "--models", str(models)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["review", "add", "--input", str(pred), *args])
    assert r.exit_code == 1 and "give the products' own file too (--products FILE)" in r.output
    r = CliRunner().invoke(main, ["review", "add", "--input", str(pred), "--products", str(new), *args])
    assert r.exit_code == 0 and f"0 added to the queue ({left} already queued or decided)" in r.output, r.output
    item = store.claim_next("ann")
    store.decide(item["product_id"], 23, "correct", "ann", "cli-1")
    r = CliRunner().invoke(main, ["review", "status", *args])
    assert r.exit_code == 0 and f"done 1, left {left - 1}" in r.output, r.output
    out = tmp_path / "decided.parquet"
    r = CliRunner().invoke(main, ["review", "export", "--out", str(out), *args])
    assert r.exit_code == 0 and "1 decided products" in r.output, r.output
    rows = read_products(out, TRAIN_COLUMNS)
    assert rows[["id", "category_id"]].values.tolist() == [[item["product_id"], 23]]
    store.close()
    r = CliRunner().invoke(main, ["config", "--data", str(data)])
    assert "review.audit_share" in r.output and "review.url" in r.output
    # a reviewer's label of a test.parquet product never becomes a training row: the submission would copy it
    r = CliRunner().invoke(main, ["review", "add", "--input", str(data / "test.parquet"), *args, *apart])
    assert r.exit_code == 0, r.output
    store = open_store(*settings_and_paths(common[1], common[3], common[5]), TREE_OBJ)
    test_ids = set(pd.read_parquet(data / "test.parquet")["id"])
    while (item := store.claim_next("bob")) and item["product_id"] not in test_ids:
        store.decide(item["product_id"], None, "skip", "bob", f"skip-{item['product_id']}")
    store.decide(item["product_id"], 23, "correct", "bob", "cli-test")
    store.close()
    # learn: the decision about a new product joins the training rows; the folds retrain, then are reused
    r = CliRunner().invoke(main, ["learn", *args])
    assert r.exit_code == 0 and "[learn] 1 decided products" in r.output and "fold 0: trained" in r.output, r.output
    assert f"1 decided products are test.parquet products (e.g. [{item['product_id']}]): left out" in r.output
    assert "submission" in r.output and "reload a running service" in r.output
    r = CliRunner().invoke(main, ["learn", *args])
    assert r.exit_code == 0 and "fold 0: finished earlier, reused" in r.output, r.output


# -- queue order and groups of similar products ----------------------------------------------------------
def predict_table(p: pd.DataFrame, conf, flagged) -> pd.DataFrame:
    """A `Predictor.predict` table of these products: their label as the model's leaf at `conf`."""
    conf = np.asarray(conf, dtype=float)
    return pd.DataFrame({"id": p["id"], "predicted_category_id": p["category_id"], "confidence": conf,
                         "category_path": "", "top1_category_id": p["category_id"], "top1_probability": conf,
                         "prediction_kind": "all models", "needs_review": np.asarray(flagged, bool)})


def titled(titles: list[str], start: int = 1000, leaf: int = 23) -> pd.DataFrame:
    p = catalogue(len(titles), start=start)
    return p.assign(title=titles, category_id=leaf, short_description=None, name_value_characteristics=None)


CHAPPI = "Корм сухой для взрослых собак Chappi мясное изобилие с говядиной"
NEAR = [f"{CHAPPI} {size}" for size in ("15 кг", "2.5 кг", "600 г", "10 кг")]  # title cosines 0.93-0.96


def served(store, reviewer: str = "ann") -> list[tuple[int, list[int]]]:
    """Every open product in the order it is served (lead, its members), each skipped after being shown."""
    out = []
    while (item := store.claim_next(reviewer)) is not None and len(out) < 50:
        out.append((item["product_id"], [m["product_id"] for m in item["members"]]))
        store.decide(item["product_id"], 23, "correct", reviewer, f"{store.dataset}-{len(out)}")
    return out


def test_the_queue_order_is_value_confidence_or_arrival_with_the_audit_sample_spread(open_store):
    from prodcat.review.items import priority

    assert priority("value", FLAGGED, 1, 0.6, 3) == pytest.approx(0.2)  # a group of 3 at 0.6: like one at 0.2
    assert priority("confidence", FLAGGED, 1, 0.6, 3) == 0.6 and priority("value", FLAGGED, 1, None, 3) == -3
    assert priority("arrival", FLAGGED, 1, 0.6, 3, arrival=17.0) == 17.0
    for order in ("value", "confidence"):  # the audit sample: a hash of the id whatever the group or confidence
        assert priority(order, AUDIT, 1006, 0.99, 5) == pytest.approx(unit_hash([1006], ORDER_SALT)[0])
    p = titled(["Шампунь детский Johnson 300 мл", "Лампа настольная Camelion KD-308", *NEAR[:3],
                "Батарейки Duracell AA 4 шт", "Носки мужские хлопок черные"])
    conf = [0.25, 0.35, 0.6, 0.65, 0.7, 0.99, 0.5]
    flagged = [True, True, True, True, True, False, True]
    table = predict_table(p, conf, flagged)
    audit_id = 1005
    ids = {}
    for order in ("value", "confidence", "arrival"):
        store = open_store(f"order-{order}")
        counts = queue_predictions(store, table, p, 1.0, "v1", {"order": order})  # every accepted one audited
        assert counts == {"flagged": 6, "audit": 1, "added": 7, "grouped": 2}
        assert store.item(audit_id)["reason"] == AUDIT and store.item(audit_id)["group_id"] is None
        if order != "arrival":
            assert store.item(audit_id)["priority"] == pytest.approx(unit_hash([audit_id], ORDER_SALT)[0])
        placed = {pid: store.item(pid)["priority"] for pid in p["id"]}
        shown = served(store)
        assert (1002, [1003, 1004]) in shown  # the lowest confidence of the three leads them
        ids[order] = [lead for lead, _ in shown]
        assert ids[order] == sorted(ids[order], key=lambda pid: (placed[pid], pid))  # served by priority
    flagged_only = {order: [pid for pid in found if pid != audit_id] for order, found in ids.items()}
    assert flagged_only["value"] == [1002, 1000, 1001, 1006]  # 3 products at 0.6 (0.2 each) before one at 0.25
    assert flagged_only["confidence"] == [1000, 1001, 1006, 1002]  # the lowest confidence first
    assert ids["arrival"] == [1000, 1001, 1002, 1005, 1006]  # as queued (the audit product with its batch)


def test_similar_flagged_products_are_grouped_when_queued(open_store):
    store = open_store()
    near = NEAR
    p = titled([near[0], "Лампа настольная Camelion KD-308", near[1], near[2]])
    table = predict_table(p, [0.4, 0.3, 0.5, 0.45], [True] * 4)
    assert queue_predictions(store, table, p, 0.0, "v1")["grouped"] == 2  # the default threshold
    assert [store.item(i)["group_id"] for i in (1000, 1001, 1002, 1003)] == [1000, None, 1000, 1000]
    assert store.item(1000)["priority"] == pytest.approx(0.4 / 3)  # value: the group's size counts
    later = titled([near[3], "Носки мужские хлопок черные"], start=2000)  # a later batch joins the open group
    assert queue_predictions(store, predict_table(later, [0.2, 0.2], [True, True]), later, 0.0, "v1")["grouped"] == 1
    assert store.item(2000)["group_id"] == 1000 and store.item(1000)["priority"] == pytest.approx(0.1)
    first = store.claim_next("ann")  # the lead (0.1) and its members, held together
    assert first["product_id"] == 1000 and [m["product_id"] for m in first["members"]] == [2000, 1003, 1002]
    assert all(store.item(i)["claimed_by"] == "ann" for i in (1000, 1002, 1003, 2000))
    assert [store.claim_next(r)["product_id"] for r in ("bob", "carl")] == [2001, 1001]  # members: never alone
    assert store.claim_next("dave") is None
    held = titled([near[0] + " новинка"], start=3000)  # the lead is claimed: a new near-duplicate stays alone
    queue_predictions(store, predict_table(held, [0.2], [True]), held, 0.0, "v1")
    assert store.item(3000)["group_id"] is None
    apart = open_store("apart")  # group_similarity null: no groups
    assert queue_predictions(apart, table, p, 0.0, "v1", {"group_similarity": None})["grouped"] == 0
    assert all(apart.item(i)["group_id"] is None for i in (1000, 1002, 1003))
    many = open_store("many")  # a lead has at most 9 members (x then 1-9 on the page)
    twelve = titled([f"{CHAPPI} {k} кг" for k in range(11, 23)], start=5000)
    queue_predictions(many, predict_table(twelve, np.linspace(0.1, 0.2, 12), [True] * 12), twelve, 0.0, "v1")
    sizes = pd.Series([many.item(5000 + k)["group_id"] for k in range(12)]).value_counts(dropna=False)
    assert sizes.tolist() == [10, 2]


def test_a_group_is_decided_at_once_but_its_excluded_members_and_undone_whole(open_store):
    store = open_store()
    p = titled(NEAR)
    p.loc[p["id"] == 1002, "category_id"] = 24  # its model said another leaf
    queue_predictions(store, predict_table(p, [0.4, 0.5, 0.6, 0.7], [True] * 4), p, 0.0, "v1")
    lead = store.claim_next("ann")
    assert lead["product_id"] == 1000 and [m["product_id"] for m in lead["members"]] == [1001, 1002, 1003]
    with pytest.raises(DataError, match=r"excluded product\(s\) 77 are not open members of product 1000's group"):
        store.decide(1000, 23, "accept", "ann", "g-1", excluded=[77])
    with pytest.raises(Conflict, match="decided with its group: decide its lead, product 1000"):
        store.decide(1001, 23, "accept", "ann", "g-2")
    assert store.decisions_frame().empty
    decision = store.decide(1000, 23, "accept", "ann", "g-3", excluded=[1003])
    assert decision["product_id"] == 1000 and decision["group_id"] == 1000
    assert store.decide(1000, 23, "accept", "ann", "g-3", excluded=[1003])["id"] == decision["id"]  # a retry
    frame = store.decisions_frame()
    assert frame[["product_id", "action", "chosen_leaf", "group_id"]].values.tolist() == [
        [1000, "accept", 23, 1000], [1001, "accept", 23, 1000], [1002, "correct", 23, 1000]]  # a row each
    assert frame["idempotency_key"].nunique() == 3
    alone = store.item(1003)
    assert alone["group_id"] is None and alone["decision_id"] is None and alone["claimed_by"] is None
    assert store.claim_next("bob")["product_id"] == 1003  # the excluded member: queued alone again
    assert store.export_training_rows()[["id", "category_id"]].values.tolist() == [[1000, 23], [1001, 23], [1002, 23]]
    assert store.counters()["done"] == 3 and store.counters()["suggestion1_accepted"] == 2
    store.decide(1003, 24, "correct", "bob", "b-1")  # bob's own decision is not part of ann's group
    undo = store.undo("ann", "u-1")
    assert undo["product_id"] == 1000 and store.undo("ann", "u-1")["id"] == undo["id"]
    frame = store.decisions_frame()
    undone = frame[frame["action"] == "undo"]
    assert sorted(undone["product_id"]) == [1000, 1001, 1002] and set(undone["group_id"]) == {1000}
    assert store.export_training_rows()[["id", "category_id"]].values.tolist() == [[1003, 24]]
    again = store.claim_next("ann")  # the group is back, held by ann
    assert again["product_id"] == 1000 and [m["product_id"] for m in again["members"]] == [1001, 1002]
    store.decide(1000, None, "skip", "ann", "s-1")  # a skip moves the whole group behind the others
    assert store.item(1000)["skips"] == 1 and store.item(1001)["decision_id"] is None
    back = store.claim_next("ann")
    assert back["product_id"] == 1000 and [m["product_id"] for m in back["members"]] == [1001, 1002]
    with pytest.raises(Conflict, match="no decision to undo"):
        store.undo("carl", "u-2")


def test_a_store_made_before_groups_opens_and_gets_the_column(open_store, url):
    from sqlalchemy import create_engine, inspect, text

    store = open_store()
    store.enqueue(queue_items(catalogue(3)))
    store.decide(1000, 21, "correct", "ann", "old-1")
    store.close()
    engine = create_engine(url)
    with engine.begin() as conn:  # as prodcat made it before: no group_id columns, no index on them
        conn.execute(text("DROP INDEX ix_review_queue_group"))
        for table in ("review_queue", "review_decisions"):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN group_id"))
    with engine.connect() as conn:
        assert "group_id" not in {c["name"] for c in inspect(conn).get_columns("review_queue")}
    engine.dispose()
    reopened = open_store()
    assert reopened.item(1000)["group_id"] is None and reopened.claim_next("ann")["members"] == []
    assert reopened.decisions_frame()["group_id"].isna().all()
    p = titled(NEAR[:3], start=4000)
    assert queue_predictions(reopened, predict_table(p, [0.1, 0.2, 0.3], [True] * 3), p, 0.0, "v1")["grouped"] == 2
    assert reopened.item(4001)["group_id"] == 4000
    assert open_store().item(4000)["group_id"] == 4000  # opened again: nothing more to add
