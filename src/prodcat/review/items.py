"""What goes into the review queue: a queued product (`QueueItem`), its snapshot of fields, the key of its
normalised text (one product text implementation: prodcat.data.text) and the reproducible hashes that pick
the audit sample and place audit products in the queue."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from prodcat.review.schema import AUDIT, FLAGGED
from prodcat.settings import REVIEW_ORDERS, ReviewSettings, defaults_of

SNAPSHOT_FIELDS = ("title", "short_description", "name_value_characteristics", "rating", "feedback_quantity")
DEFAULT_ORDER = defaults_of(ReviewSettings)["order"]  # review.order, declared in prodcat.settings
AUDIT_SALT, ORDER_SALT = 0x5EED_A0D1, 0x0DE5_0F7E  # two independent hashes of a product id


@dataclass
class QueueItem:
    """A product for a person to decide: its fields, the model's top-N suggestions (leaf, probability) best
    first, the model's leaf and confidence (None: no model could predict it), why it is queued; its place in
    the queue: the order (review.order), its group (`group_id`: the lead's product id, None: alone; the
    lead's `group_size` counts it and its members) and when it arrived (seconds; `arrival` order)."""

    product_id: int
    snapshot: dict
    suggestions: list[tuple[int, float]] = field(default_factory=list)
    model_leaf: int | None = None
    confidence: float | None = None
    model_version: str = ""
    reason: str = FLAGGED
    order: str = DEFAULT_ORDER
    group_id: int | None = None
    group_size: int = 1
    arrival: float = 0.0

    @property
    def priority(self) -> float:
        """Its place in the queue, lowest first (`priority`)."""
        return priority(self.order, self.reason, self.product_id, self.confidence, self.group_size, self.arrival)


def priority(order: str, reason: str, product_id: int, confidence: float | None, size: int = 1,
             arrival: float = 0.0) -> float:
    """The queue's order, lowest first; the one place it is computed. `confidence`: the lowest confidence first
    (no prediction: -1, first); `value`: the time a decision saves first - confidence / products decided
    together (`size`: a group's lead counts its members; no prediction: -size), so bigger groups and less
    certain ones come first, a product alone as in `confidence`; `arrival`: as queued (`arrival`, seconds).
    An audit product (confidence and value) sits at a hash of its id, uniform in [0, 1), so the audit sample
    is spread through the flagged products instead of waiting behind them all (its own confidence is high);
    in arrival order it comes as queued, among the products of its batch (the hash picked it)."""
    if order not in REVIEW_ORDERS:
        raise ValueError(f"review.order {order!r} is not one of {', '.join(REVIEW_ORDERS)}")
    if order == "arrival":
        return float(arrival)
    if reason == AUDIT:
        return float(unit_hash([product_id], ORDER_SALT)[0])
    size = max(int(size), 1) if order == "value" else 1
    return -float(size) if confidence is None else float(confidence) / size


def clean(value):
    """A JSON-safe scalar: numpy numbers as Python numbers, NaN and pandas' missing values as None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def snapshots(products: pd.DataFrame) -> list[dict]:
    """Each product's fields as a JSON-safe dict (the photo's path too, when the frame has one)."""
    cols = [c for c in SNAPSHOT_FIELDS if c in products.columns]
    photo = "image_path" in products.columns
    out = []
    for i, row in enumerate(products[cols].itertuples(index=False, name=None)):
        snap = {c: clean(v) for c, v in zip(cols, row)}
        snap |= {c: None for c in SNAPSHOT_FIELDS if c not in snap}
        path = clean(products["image_path"].iat[i]) if photo else None
        if path:
            snap["image_path"] = str(path)
        out.append(snap)
    return out


def text_keys(snaps: list[dict]) -> list[str | None]:
    """Hash of each product's normalised text (the default text settings, prodcat.data.text): products
    with the same text have the same key; a product with no text has none (it matches nothing)."""
    from prodcat.data.text import product_texts

    if not snaps:
        return []
    frame = pd.DataFrame({"id": np.arange(len(snaps))} | {c: [s.get(c) for s in snaps] for c in SNAPSHOT_FIELDS[:3]})
    texts = product_texts(frame, None).tolist()
    return [hashlib.sha1(t.encode("utf-8")).hexdigest()[:32] if t.strip() else None for t in texts]


def unit_hash(ids, salt: int) -> np.ndarray:
    """A reproducible number in [0, 1) per product id (splitmix64 of the id and a salt)."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64) ^ np.uint64(salt)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def audit_sample(ids, share: float) -> np.ndarray:
    """Which of these products belong to the audit sample: a hash of the id below `share` (the same
    products every time, about `share` of any set of ids)."""
    return unit_hash(ids, AUDIT_SALT) < share
