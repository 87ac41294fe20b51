"""The review store's tables (SQLAlchemy Core): `queue`, the products waiting for a person (one row
per dataset and product, its claim and its standing decision), `decisions`, the append-only record of
every decision (never updated or deleted; an undo is a row of its own), and `sessions_ended`, the
reviewers' signed-out sessions (every worker and replica of the service refuses their cookies).

`group_id` (both tables, null: alone) is the product id of a group's lead: similar products decided together
(prodcat.review.groups); a store made before it had the column gets it when opened (`GROUP_COLUMNS`)."""
from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Float, Index, Integer, MetaData, String, Table, UniqueConstraint

ACCEPT, CORRECT, SKIP, UNDO = "accept", "correct", "skip", "undo"
CHOICES = (ACCEPT, CORRECT)  # the actions that put a product in a leaf
ACTIONS = (ACCEPT, CORRECT, SKIP)  # what `decide` takes; UNDO is `undo`'s
FLAGGED, AUDIT, SUSPECT = "flagged", "audit", "suspect"  # why a product was queued (suspect: a training label)

ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only an INTEGER primary key

metadata = MetaData()

queue = Table(
    "review_queue", metadata,
    Column("dataset", String(200), primary_key=True),
    Column("product_id", BigInteger, primary_key=True),
    Column("snapshot", JSON, nullable=False),  # the product's fields when it was queued
    Column("suggestions", JSON, nullable=False),  # [[leaf, probability], ...], best first
    Column("model_leaf", BigInteger),  # null: no model could predict the product
    Column("confidence", Float),
    Column("model_version", String(200), nullable=False),
    Column("reason", String(16), nullable=False),  # FLAGGED | AUDIT
    Column("text_key", String(40)),  # hash of the normalised text (null: the product has no text)
    Column("priority", Float, nullable=False),  # served lowest first (see prodcat.review.items)
    Column("skips", Integer, nullable=False, default=0),  # skipped products come after the others
    Column("enqueued_at", Float, nullable=False),
    Column("claimed_by", String(200)),
    Column("claimed_at", Float),
    Column("claim_expires", Float),
    Column("decision_id", BigInteger),  # the standing decision (null: still to be decided)
    Column("group_id", BigInteger),  # the lead's product id (the lead's own too); null: alone
)
Index("ix_review_queue_open", queue.c.dataset, queue.c.skips, queue.c.priority, queue.c.product_id,
      sqlite_where=queue.c.decision_id.is_(None), postgresql_where=queue.c.decision_id.is_(None))
Index("ix_review_queue_claims", queue.c.dataset, queue.c.claimed_by, queue.c.claimed_at)
GROUP_INDEX = Index("ix_review_queue_group", queue.c.dataset, queue.c.group_id)

decisions = Table(
    "review_decisions", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("dataset", String(200), nullable=False),
    Column("product_id", BigInteger, nullable=False),
    Column("snapshot", JSON, nullable=False),
    Column("model_leaf", BigInteger),
    Column("model_confidence", Float),
    Column("model_version", String(200), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("text_key", String(40)),
    Column("chosen_leaf", BigInteger),  # null for skip and undo
    Column("action", String(16), nullable=False),  # ACCEPT | CORRECT | SKIP | UNDO
    Column("reviewer", String(200), nullable=False),
    Column("undoes", BigInteger),  # UNDO: the decision it cancels (each at most once)
    Column("idempotency_key", String(200), nullable=False),
    Column("at", Float, nullable=False),  # seconds since the epoch (UTC)
    Column("group_id", BigInteger),  # decided with its group: the lead's product id (null: alone)
    UniqueConstraint("idempotency_key", name="uq_review_decisions_key"),
    UniqueConstraint("undoes", name="uq_review_decisions_undoes"),
)
Index("ix_review_decisions_reviewer", decisions.c.dataset, decisions.c.reviewer, decisions.c.id)
Index("ix_review_decisions_text", decisions.c.dataset, decisions.c.text_key)
Index("ix_review_decisions_product", decisions.c.dataset, decisions.c.product_id)

GROUP_COLUMNS = ((queue, "group_id"), (decisions, "group_id"))  # added later: added to an older store at open

sessions_ended = Table(
    "review_sessions_ended", metadata,
    Column("session_id", String(64), primary_key=True),  # the random id inside the session's signed cookie
    Column("reviewer", String(200), nullable=False),
    Column("ended_at", Float, nullable=False),  # seconds since the epoch (UTC)
    Column("expires_at", Float, nullable=False),  # the session's own expiry: past it the row is dropped
)
Index("ix_review_sessions_ended_expiry", sessions_ended.c.expires_at)
