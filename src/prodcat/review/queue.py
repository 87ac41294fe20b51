"""Filling the review queue from predictions: the flagged products and an audit sample of the accepted ones
(`queue_predictions`), the store of a config and workdir (`open_store`), and what `review add` reads."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.errors import NotTrainedError, fail
from prodcat.probs import NO_LABEL
from prodcat.review.groups import MAX_MEMBERS, form_groups, similar_pairs, title_vectors
from prodcat.review.items import QueueItem, audit_sample, snapshots
from prodcat.review.schema import AUDIT, FLAGGED, SUSPECT
from prodcat.review.store import ReviewStore

PREDICTION_COLUMNS = ("id", "predicted_category_id", "confidence", "needs_review", "top1_category_id")
HEADS = 1000  # open queued products (the newest) a new product may join as the lead of its group


def queue_predictions(store: ReviewStore, table: pd.DataFrame, products: pd.DataFrame, audit_share: float,
                      model_version: str, review: dict | None = None) -> dict:
    """Queue the products of a `Predictor.predict` table (prodcat.predict) that need review, and the audit
    sample (`audit_share` of the others, picked by a hash of the id); `products` holds their fields (ids as
    in the table). Products already queued, or whose normalised text a person already decided, are left
    out. `review`: the review settings (order, group_similarity; None: their declared defaults): the queue's
    order, and the flagged products' groups (`group_items`). Returns {"flagged": n, "audit": n, "added": n,
    "grouped": members queued with a lead}."""
    from prodcat.settings import ReviewSettings, defaults_of

    review = defaults_of(ReviewSettings) | dict(review or {})
    now = time.time()
    table = table.reset_index(drop=True)
    ids = table["id"].to_numpy(np.int64)
    flagged, audit = queued(table, audit_share)
    rows = np.flatnonzero(flagged | audit)
    where = pd.Index(products["id"].to_numpy(np.int64)).get_indexer(ids[rows])
    if (where < 0).any():
        fail("products", "id", f"no fields for predicted products {ids[rows][where < 0][:5].tolist()}")
    snaps = snapshots(products.iloc[where])
    tops = [(f"top{j}_category_id", f"top{j}_probability") for j in range(1, 10)
            if f"top{j}_category_id" in table.columns]
    items = []
    for snap, r in zip(snaps, rows.tolist()):
        conf = table["confidence"].iat[r]
        leaf = int(table["predicted_category_id"].iat[r])
        known = leaf != NO_LABEL and not pd.isna(conf)
        items.append(QueueItem(
            product_id=int(ids[r]), snapshot=snap, model_version=model_version,
            suggestions=[(int(table[c].iat[r]), float(table[p].iat[r])) for c, p in tops
                         if int(table[c].iat[r]) != NO_LABEL],
            model_leaf=leaf if known else None, confidence=float(conf) if known else None,
            reason=FLAGGED if flagged[r] else AUDIT, order=review["order"], arrival=now + len(items) * 1e-6))
    items = group_items(store, items, review["group_similarity"])
    grouped = sum(i.group_id is not None and i.group_id != i.product_id for i in items)
    return {"flagged": int(flagged.sum()), "audit": int(audit.sum()), "added": store.enqueue(items),
            "grouped": grouped}


def group_items(store: ReviewStore, items: list[QueueItem], threshold: float | None) -> list[QueueItem]:
    """The items with their groups (QueueItem.group_id, group_size): a flagged product whose title cosine with
    an open, unclaimed flagged product already queued (the newest HEADS, prodcat.review.groups) reaches
    `threshold` joins the most similar one's group, while it has room; the others are grouped among themselves
    (prodcat.review.groups.form_groups, in the queue's order: a group's lead is its most urgent product). The
    audit sample and catalogue checks are never grouped. `threshold` None: no groups."""
    if threshold is None:
        return items
    flagged = store.fresh(i for i in items if i.reason == FLAGGED)
    if not flagged:
        return items
    vectors = title_vectors([i.snapshot.get("title") for i in flagged])
    group: dict[int, tuple[int, int]] = {}  # product id -> (lead id, lead's group size: set for leads)
    heads = store.open_heads(HEADS)
    rest = np.arange(len(flagged))
    if heads:
        room = {h["product_id"]: MAX_MEMBERS - h["members"] for h in heads}
        i, j, s = similar_pairs(vectors, title_vectors([h["title"] for h in heads]), floor=threshold)
        for k in np.argsort(-s, kind="stable"):
            pid, head = int(flagged[i[k]].product_id), heads[j[k]]["product_id"]
            if pid not in group and room[head] > 0:
                group[pid], room[head] = (head, 0), room[head] - 1
        rest = np.array([k for k, item in enumerate(flagged) if int(item.product_id) not in group], dtype=int)
    if len(rest) > 1:
        order = np.argsort([flagged[k].priority for k in rest], kind="stable")
        lead = form_groups(vectors[rest], threshold, order)
        sizes = np.bincount(lead, minlength=len(lead))
        for k, lead_k in enumerate(lead):
            if sizes[lead_k] > 1:
                group[int(flagged[rest[k]].product_id)] = (int(flagged[rest[lead_k]].product_id), int(sizes[lead_k]))
    return [dataclasses.replace(i, group_id=group[i.product_id][0],
                                group_size=group[i.product_id][1] if group[i.product_id][0] == i.product_id else 1)
            if i.product_id in group else i for i in items]


def queue_suspects(store: ReviewStore, suspects: pd.DataFrame, products: pd.DataFrame, model_version: str) -> int:
    """Queue training products whose label looks wrong (prodcat.training.suspects) as catalogue checks: the
    suggested leaf first, the current label as the second option. Returns how many were added."""
    where = pd.Index(products["id"].to_numpy(np.int64)).get_indexer(suspects["id"].to_numpy(np.int64))
    snaps = snapshots(products.iloc[where])
    items = [QueueItem(product_id=int(r.id), snapshot=snap, model_version=model_version, reason=SUSPECT,
                       suggestions=[(int(r.suggested_category_id), float(r.suggested_probability)),
                                    (int(r.current_category_id), float(r.label_self_confidence))],
                       model_leaf=int(r.suggested_category_id), confidence=float(r.suggested_probability))
             for r, snap in zip(suspects.itertuples(index=False), snaps)]
    return store.enqueue(items)


def queued(table: pd.DataFrame, audit_share: float) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, audit) masks of a `Predictor.predict` table's rows: the products that need review, and the
    audit sample of the others (`audit_share`, picked by a hash of the id)."""
    flagged = table["needs_review"].to_numpy(bool)
    return flagged, ~flagged & audit_sample(table["id"].to_numpy(np.int64), audit_share)


def store_url(url: str, paths) -> str:
    """review.url, or for 'auto' the SQLite file of the workdir and dataset (outputs.Paths.review_db), its
    folder made."""
    from prodcat.review.db import StoreError

    if url != "auto":
        return url
    path = paths.review_db.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"review store {path}: {exc.strerror or exc} (the models folder is not "
                         "<workdir>/models/<dataset>/: set review.url)") from None
    return f"sqlite:///{path}"


def open_store(cfg: dict, paths, tree=None) -> ReviewStore:
    """The ReviewStore of these settings (review.url), this dataset and `tree` (None: the tree saved beside
    the dataset's models, the one their decisions were made under)."""
    if tree is None:
        from prodcat.data.tree import CategoryTree
        from prodcat.outputs import TREE_FILE

        saved = paths.models_root / TREE_FILE
        if not saved.is_file():
            ReviewStore(store_url(cfg["review"]["url"], paths), paths.dataset).close()  # a bad store is named first
            raise NotTrainedError(f"{paths.models_root}: no saved models (their tree keys the review store): "
                                  "./run.sh all first")
        tree = CategoryTree.from_csv(saved)
    return ReviewStore(store_url(cfg["review"]["url"], paths), paths.dataset, tree)


def teach(predictor, store: ReviewStore) -> None:
    """The store's standing decisions join the models' memory (Predictor.remember: the kNN searches them
    beside its training products) when they changed since the models last learned them; undone ones are
    forgotten."""
    version = (store.dataset, store.version())
    if version != predictor.memory_version:
        rows = store.export_training_rows()
        predictor.remember(rows if len(rows) else None, version)


def read_review_input(input_path: Path, products_path: Path | None, images: Path | None, predictor,
                      min_precision: float, top: int, echo=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, products) for `review add`: a product file is predicted with the saved models on the
    way in; a `predict` output is taken as it is, with the products' fields from `products_path`."""
    from prodcat.data.dataset import ImageFolder, read_input, with_photos

    columns = _parquet_columns(input_path)
    is_output = "needs_review" in columns
    if is_output and products_path is None:
        fail(input_path, None, "is a `predict` output: give the products' own file too (--products FILE)")
    if images is not None and not images.is_dir():
        fail(images.resolve(), None, "--images folder not found")
    products = read_input(products_path if is_output else input_path)
    folder = (products_path if is_output else input_path).parent / "images"
    products = with_photos(products, ImageFolder(images or folder), None)
    if not is_output:
        echo(f"[review] predicting {len(products)} products from {input_path} with '{predictor.model}' "
             f"(min precision {min_precision})")
        return predictor.predict(products, top=min(top, predictor.top_k), min_precision=min_precision), products
    table = pd.read_parquet(input_path)
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        fail(input_path, missing[0], f"missing column(s) {missing} of a `predict` output")
    echo(f"[review] {input_path} is a `predict` output: its needs_review column says which products need review")
    return table, products


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    if not path.exists():
        fail(path.resolve(), None, "file not found")
    try:
        return pq.read_schema(path).names
    except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
        fail(path, None, f"cannot be read as parquet: {exc}")
