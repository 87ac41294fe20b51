"""The people's time, measured (issue 35 item 5): a day of tomorrow's products goes through the review desk
and a simulated reviewer decides every product it shows; per configuration of the desk it prints the
decisions and the person-seconds per 1,000 products, and the accuracy of the day's final labels. Measures
and prints.

    ./run.sh python bench/bench_reviewer.py MODELS_DIR DATA_DIR [--n 10000] [--batches 20] [--seed 0]

The products: labelled products no model was given (uhtt_ke: extra_labeled.parquet less the models'
train_ids.npz - the `train_only.holdout` of the dataset's seeded draw, as bench/bench_refit.py finds them), a
seeded sample of `--n`, with new ids past every training id (tomorrow's products; the new ids follow the
original ids' order). Two days: `random` (they arrive in a random order) and `listing` (sorted by their
original ids, as sellers' batches arrive).

The desk: the service's own code, in this process - Predictor.predict (top 9, min precision 0.98), the
answers from decisions (a product whose normalised text a person decided is answered with that leaf, as
serve.desk.apply_decisions does), queue_predictions into a fresh SQLite ReviewStore (audit share 0.02, the
review settings of the configuration), ReviewStore.claim_next / decide, and review.queue.teach. The day
arrives in `--batches` batches, in the day's order: each batch is predicted (item 1 on: after `teach`, as
every /v1/predict request does), queued, and the reviewer works the queue until it is empty before the next
batch comes. Predictions happen only when a batch arrives, so teaching once before each batch gives exactly
the predictions that teaching after every decision would. `--pace S`: the reviewer works only S person-seconds
between two batches and the rest of the queue waits (open products may then lead the next batches' near-
duplicates, and the queue's order decides what is decided before the next batch is predicted); the queue is
emptied after the last batch.

The reviewer decides each shown item with its true leaf. Cost model: the true leaf is suggestion 1: 2 s;
suggestion 2-9: 4 s; not among the item's suggestions (a tree search): 15 s. A group: its lead's cost + 1 s per
further member; a member whose true leaf differs from the lead's is excluded (1 s more) and decided alone
afterwards, at its own cost. An audit product is decided as any other.

Final labels: an auto-accepted product keeps its predicted leaf, one answered from decisions the decision's,
a decided one the reviewer's. Items: 1 = a decision teaches at once, 2 = groups (review.group_similarity 0.91,
off: null), 3 = queue order value (off: arrival).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SUGGESTION1_S, SUGGESTION_S, SEARCH_S, MEMBER_S, EXCLUDE_S = 2.0, 4.0, 15.0, 1.0, 1.0
REVIEWER = "sim"
# name: (item 1 teach, item 2 group similarity, item 3 order)
CONFIGS = {
    "all off": (False, None, "arrival"),
    "1 teach": (True, None, "arrival"),
    "2 groups": (False, 0.91, "arrival"),
    "3 value order": (False, None, "value"),
    "all on": (True, 0.91, "value"),
}


def unseen_products(models: Path, data: Path, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of the labelled products the models were never given (bench_refit's way: the extra
    products not in train_ids.npz), with `original_id` and new ids past every training id, in the order of
    the original ids."""
    with np.load(models / "train_ids.npz") as z:
        given = z["ids"]
    extra = pd.read_parquet(data / "extra_labeled.parquet")
    train_ids = pd.read_parquet(data / "train.parquet", columns=["id"])["id"]
    unseen = extra[~extra["id"].isin(given) & ~extra["id"].isin(train_ids)]
    sample = unseen.sample(min(n, len(unseen)), random_state=seed).sort_values("id").reset_index(drop=True)
    first = int(max(given.max(), train_ids.max(), extra["id"].max())) + 1
    sample.insert(0, "original_id", sample["id"].to_numpy())
    sample["id"] = np.arange(len(sample), dtype=np.int64) + first
    print(f"[bench_reviewer] {len(unseen)} unseen labelled products of {data}; a day: {len(sample)} of them "
          f"(seed {seed}), new ids from {first}", flush=True)
    return sample


def day_orders(n: int, seed: int) -> dict[str, np.ndarray]:
    """The rows of the sample (sorted by original id) in each day's order of arrival."""
    return {"random": np.random.default_rng(seed).permutation(n), "listing": np.arange(n)}


def shown_cost(truth: int, suggestions: list[int]) -> tuple[float, str]:
    """(seconds, kind) of deciding one product with its true leaf."""
    if suggestions and suggestions[0] == truth:
        return SUGGESTION1_S, "s1"
    if truth in suggestions[1:9]:
        return SUGGESTION_S, "s2-9"
    return SEARCH_S, "search"


def run_day(predictor, tree, day: pd.DataFrame, batches: list[np.ndarray], name: str, config: tuple,
            cached: list[pd.DataFrame] | None, args, folder: Path) -> tuple[dict, list[pd.DataFrame]]:
    """One configuration over one day: (the row of the table, the batches' predictions)."""
    from prodcat.review.items import snapshots, text_keys
    from prodcat.review.queue import queue_predictions, teach
    from prodcat.review.schema import ACCEPT, CORRECT
    from prodcat.review.store import ReviewStore

    teaches, similarity, order = config
    review = {"order": order, "group_similarity": similarity}
    store = ReviewStore(f"sqlite:///{folder / (name.replace(' ', '_') + '.db')}", "bench", tree)
    predictor.remember(None, None)  # nothing decided yet: the models as trained
    truth = dict(zip(day["id"].tolist(), day["category_id"].tolist()))
    products = day.drop(columns=["category_id", "original_id"])
    final = {}
    accepted_ok = accepted_n = answered_ok = answered_n = 0
    seconds = 0.0
    counts = {"items": 0, "decided": 0, "s1": 0, "s2-9": 0, "search": 0, "groups": 0, "members": 0, "excluded": 0,
              "audit": 0}
    tables, predict_s, review_s = [], 0.0, 0.0
    for b, rows in enumerate(batches):
        frame = products.iloc[rows].reset_index(drop=True)
        started = time.perf_counter()
        if cached is not None:
            table = cached[b]
        else:
            if teaches:
                teach(predictor, store)  # what /v1/predict does first
            table = predictor.predict(frame, top=args.top, min_precision=args.min_precision)
        tables.append(table)
        predict_s += time.perf_counter() - started
        started = time.perf_counter()
        ids = table["id"].to_numpy(np.int64)
        keys = text_keys(snapshots(frame))
        decided = store.decided_leaves(k for k in keys if k)  # serve.desk.decided / apply_decisions
        from_decision = np.array([k in decided for k in keys], bool)
        needs = table["needs_review"].to_numpy(bool)
        predicted = table["predicted_category_id"].to_numpy(np.int64)
        y = np.array([truth[i] for i in ids])
        for r in np.flatnonzero(from_decision):
            final[int(ids[r])] = int(decided[keys[r]]["chosen_leaf"])
        answered_n += int(from_decision.sum())
        answered_ok += int(sum(final[int(ids[r])] == y[r] for r in np.flatnonzero(from_decision)))
        auto = ~needs & ~from_decision
        accepted_n += int(auto.sum())
        accepted_ok += int((predicted[auto] == y[auto]).sum())
        for r in np.flatnonzero(auto):
            final[int(ids[r])] = int(predicted[r])
        queue_predictions(store, table, frame, args.audit_share, "bench", review)
        budget = seconds + args.pace if args.pace > 0 and b < len(batches) - 1 else float("inf")
        while seconds < budget and (item := store.claim_next(REVIEWER)) is not None:
            pid = int(item["product_id"])
            leaf = truth[pid]
            cost, kind = shown_cost(leaf, [int(s[0]) for s in item["suggestions"]])
            members = [int(m["product_id"]) for m in item["members"]]
            excluded = [m for m in members if truth[m] != leaf]
            cost += MEMBER_S * len(members) + EXCLUDE_S * len(excluded)
            seconds += cost
            counts["items"] += 1
            counts[kind] += 1
            counts["decided"] += 1 + len(members) - len(excluded)
            counts["audit"] += item["reason"] == "audit"
            if members:
                counts["groups"] += 1
                counts["members"] += len(members)
                counts["excluded"] += len(excluded)
            action = ACCEPT if item["model_leaf"] is not None and int(item["model_leaf"]) == leaf else CORRECT
            store.decide(pid, leaf, action, REVIEWER, f"k{pid}", excluded=excluded)
        review_s += time.perf_counter() - started
    # the decided products' final labels: the store's standing decisions
    rows = store.export_training_rows()
    for pid, leaf in zip(rows["id"].tolist(), rows["category_id"].tolist()):
        final[int(pid)] = int(leaf)
    store.close()
    missing = [i for i in truth if i not in final]
    if missing:  # flagged, not queued, not answered: none expected (a same-id product is never requeued)
        print(f"[bench_reviewer] {name}: {len(missing)} products without a final label (counted wrong)", flush=True)
    n = len(truth)
    correct = sum(final.get(i) == t for i, t in truth.items())
    per_k = 1000.0 / n
    row = {"config": name, "items_per_1k": counts["items"] * per_k, "decided_per_1k": counts["decided"] * per_k,
           "person_s_per_1k": seconds * per_k,
           "s1": counts["s1"], "s2_9": counts["s2-9"], "search": counts["search"], "groups": counts["groups"],
           "members": counts["members"], "excluded": counts["excluded"], "audit": counts["audit"],
           "auto_share": accepted_n / n, "auto_precision": accepted_ok / accepted_n if accepted_n else float("nan"),
           "from_decisions": answered_n, "from_decisions_precision": answered_ok / answered_n if answered_n else
           float("nan"),
           "final_accuracy": correct / n, "predict_s": round(predict_s, 1), "review_s": round(review_s, 1)}
    return row, tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--n", type=int, default=10_000, help="products in a day (a seeded sample of the unseen ones)")
    ap.add_argument("--batches", type=int, default=20, help="batches the day arrives in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--days", default="random,listing")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    ap.add_argument("--top", type=int, default=9, help="suggestions per queued product (predict --top)")
    ap.add_argument("--min-precision", type=float, default=0.98)
    ap.add_argument("--audit-share", type=float, default=0.02)
    ap.add_argument("--use", default="folds")
    ap.add_argument("--pace", type=float, default=0.0,
                    help="person-seconds the reviewer works between two batches, the rest of the queue waiting "
                         "(it is emptied after the last batch); 0: the queue is emptied before every next batch")
    args = ap.parse_args()

    from prodcat.predict import Predictor

    started = time.perf_counter()
    predictor = Predictor.load(args.models, use=args.use)
    top = min(args.top, predictor.top_k)
    if top != args.top:
        print(f"[bench_reviewer] the models keep {predictor.top_k} classes: --top {top}", flush=True)
        args.top = top
    print(f"[bench_reviewer] models {args.models} ({predictor.model}, use={args.use}) loaded in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    sample = unseen_products(args.models, args.data, args.n, args.seed)
    orders = day_orders(len(sample), args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_reviewer-") as tmp:
        for day_name in args.days.split(","):
            day = sample.iloc[orders[day_name]].reset_index(drop=True)
            batches = np.array_split(np.arange(len(day)), args.batches)
            untaught = None  # item 1 off: the same predictions in every configuration of the day
            for name in args.configs.split(","):
                folder = Path(tmp) / day_name
                folder.mkdir(exist_ok=True)
                started = time.perf_counter()
                teaches = CONFIGS[name][0]
                row, tables = run_day(predictor, predictor.tree, day, batches, name, CONFIGS[name],
                                      None if teaches else untaught, args, folder)
                if not teaches:
                    untaught = tables
                row = {"day": day_name} | row | {"wall_s": round(time.perf_counter() - started, 1)}
                results.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    table = pd.DataFrame(results)
    shown = ["day", "config", "items_per_1k", "decided_per_1k", "person_s_per_1k", "s1", "s2_9", "search",
             "groups", "members", "excluded", "auto_share", "auto_precision", "from_decisions", "final_accuracy"]
    print(f"\n[bench_reviewer] {len(sample)} products a day, {args.batches} batches, pace "
          f"{args.pace or 'queue emptied'}, min precision "
          f"{args.min_precision}, audit share {args.audit_share}, top {args.top}")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table[shown].round({"items_per_1k": 1, "decided_per_1k": 1, "person_s_per_1k": 1, "auto_share": 4,
                                  "auto_precision": 4, "final_accuracy": 4}).to_string(index=False))
    for day_name, part in table.groupby("day", sort=False):
        by = part.set_index("config")
        if {"all off", "all on"} <= set(by.index):
            ratio = by.at["all on", "person_s_per_1k"] / by.at["all off", "person_s_per_1k"]
            print(f"[bench_reviewer] {day_name}: all on / all off person-seconds = {ratio:.3f} (target <= 0.80), "
                  f"final accuracy {by.at['all on', 'final_accuracy']:.4f} vs {by.at['all off', 'final_accuracy']:.4f}")
    if {"all off", "all on"} <= set(table["config"]):
        on = table[table["config"] == "all on"]["person_s_per_1k"].sum()
        off = table[table["config"] == "all off"]["person_s_per_1k"].sum()
        print(f"[bench_reviewer] both days: all on / all off person-seconds = {on / off:.3f} (target <= 0.80)")


if __name__ == "__main__":
    main()
