"""The review store: the queue of products waiting for a person and the append-only record of what people
decided, in SQLite (the default: a file under the workdir) or PostgreSQL (several service replicas).

    store = ReviewStore("sqlite:///review/uhtt_ke/review.db", "uhtt_ke", tree)
    store.enqueue(items)                                   # QueueItems; returns how many were added
    item = store.claim_next("ann")                         # the lowest-priority open product, held by ann
    store.decide(item["product_id"], 1234, "accept", "ann", idempotency_key="...")
    store.undo("ann", idempotency_key="...")               # ann's last decision; the product is queued again

Groups (`group_id`, prodcat.review.groups): a lead and its near-duplicates. Claiming the lead holds its members
too (`item["members"]`); a member is never served alone while its lead is open; deciding the lead decides every
member not `excluded` (a decision row each, carrying the group id; excluded ones are queued alone again); an
undo of a group decision undoes all of its rows.

Every write is one transaction, committed before the call returns; enqueues and decisions are also on
disk by then (SQLite: synchronous=FULL; PostgreSQL: synchronous_commit), a claim need not be (lost, it is
free again). Two reviewers never hold the same product: a claim is taken in a transaction that locks first
(SQLite: BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED) and lasts `ttl_s` seconds. Open
one store per process and keep it (it holds a connection pool).
"""
from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace
from typing import Iterable

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, delete, exists, func, insert, inspect, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from prodcat.data.tree import CategoryTree
from prodcat.errors import DataError
from prodcat.review.db import Conflict, StoreError, masked, open_engine, transaction
from prodcat.review.groups import MAX_MEMBERS
from prodcat.review.items import SNAPSHOT_FIELDS, QueueItem, priority, text_keys
from prodcat.review.schema import (ACCEPT, ACTIONS, AUDIT, CHOICES, CORRECT, FLAGGED, GROUP_COLUMNS, GROUP_INDEX, SKIP,
                                   UNDO, decisions, metadata, queue, sessions_ended)

CHUNK = 500  # values per IN (...) list
ATTEMPTS = 5  # PostgreSQL: a transaction that met a concurrent one's unique key is tried again


def default_ttl() -> float:
    """The declared default of review.claim_ttl_s (prodcat.settings)."""
    from prodcat.settings import ReviewSettings, defaults_of

    return float(defaults_of(ReviewSettings)["claim_ttl_s"])


def standing(d=decisions):
    """SQL condition: a decision that puts its product in a leaf and was not undone."""
    u = decisions.alias("u")
    return d.c.action.in_(CHOICES) & ~exists().where(u.c.undoes == d.c.id)


def visible(q=queue):
    """SQL condition: a queue row served on its own - alone, a group's lead, or a member whose lead is decided."""
    lead = queue.alias("lead")
    return or_(q.c.group_id.is_(None), q.c.group_id == q.c.product_id,
               ~exists().where(lead.c.dataset == q.c.dataset, lead.c.product_id == q.c.group_id,
                               lead.c.decision_id.is_(None)))


def member_key(key: str, product_id: int) -> str:
    """The idempotency key of a group member's row, made from the request's key (a retry makes the same)."""
    return f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}:{int(product_id)}"


def scope_of(dataset: str, tree: CategoryTree | None) -> str:
    """What a store's rows are keyed by: the dataset and the structure of the tree they were made under
    ('NAME@TREE_FINGERPRINT'), so a decision is never served, queued or exported under another tree."""
    return str(dataset) if tree is None else f"{dataset}@{tree.fingerprint}"


class ReviewStore:
    """The queue and decisions of one dataset and its category tree in the database at `url`: rows are
    keyed by both (`scope_of`), so models of another tree see none of them; `tree` checks that a chosen
    leaf is a leaf."""

    def __init__(self, url: str, dataset: str, tree: CategoryTree | None = None):
        self.url, self.name, self.tree = str(url), str(dataset), tree
        self.dataset = scope_of(self.name, tree)
        self.engine = open_engine(self.url)
        self.postgres = self.engine.dialect.name == "postgresql"
        with self._tx(write=True) as conn:  # tables made once, by one process at a time
            if self.postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(727001)"))
            metadata.create_all(conn)
            self._add_group_columns(conn)
            if tree is not None:
                self._adopt_unscoped(conn)

    def _add_group_columns(self, conn) -> None:
        """A store made before groups existed gets its `group_id` columns (null: alone) and their index."""
        found = inspect(conn)
        for table, column in GROUP_COLUMNS:
            if column not in {c["name"] for c in found.get_columns(table.name)}:
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column} BIGINT"))
        GROUP_INDEX.create(conn, checkfirst=True)

    def _adopt_unscoped(self, conn) -> None:
        """Rows a store of an earlier prodcat keyed by the dataset's name alone join this tree's scope, when
        no tree has taken them yet and every leaf they name is a leaf of this tree (else they stay apart)."""
        if conn.execute(select(queue.c.product_id).where(queue.c.dataset == self.name).limit(1)).first() is None:
            return
        if conn.execute(select(queue.c.product_id).where(queue.c.dataset.like(f"{self.name}@%")).limit(1)).first():
            return
        leaves = {*conn.execute(select(decisions.c.chosen_leaf).where(decisions.c.dataset == self.name)).scalars(),
                  *conn.execute(select(queue.c.model_leaf).where(queue.c.dataset == self.name)).scalars()}
        if all(self.tree.is_leaf(leaf) for leaf in leaves if leaf is not None):
            for table in (queue, decisions):
                conn.execute(update(table).where(table.c.dataset == self.name).values(dataset=self.dataset))

    def __repr__(self) -> str:
        return f"ReviewStore({masked(self.url)!r}, {self.dataset!r})"

    def __str__(self) -> str:
        return f"review store {masked(self.url)} ({self.name})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self, write: bool, durable: bool = True):
        return transaction(self.engine, self.url, write, durable)

    def _retry(self, work):
        """`work(conn)` in a write transaction, tried again when a concurrent transaction took a unique key
        first (PostgreSQL; SQLite's writers run one at a time)."""
        for attempt in range(ATTEMPTS):
            try:
                with self._tx(write=True) as conn:
                    return work(conn)
            except IntegrityError as exc:
                if attempt == ATTEMPTS - 1:
                    raise StoreError(f"review store {masked(self.url)}: {str(exc.orig).splitlines()[0]}") from None
        raise AssertionError("unreachable")

    # -- the queue ---------------------------------------------------------------------------------------
    def enqueue(self, items: Iterable[QueueItem]) -> int:
        """Queue products; one already queued (decided or not) or whose normalised text already has a
        standing decision is left out. An item's `group_id` names its lead: another item, or an open product
        already queued (it then leads them, if it is still open, unclaimed, flagged, not a member and has
        room); a member whose lead is not queued with it, or cannot lead, is queued alone. Returns how many
        were added."""
        items = self.fresh(items)
        keys = text_keys([i.snapshot for i in items])
        now = time.time()
        rows = [{"dataset": self.dataset, "product_id": int(i.product_id), "snapshot": i.snapshot,
                 "suggestions": [[int(leaf), float(p)] for leaf, p in i.suggestions],
                 "model_leaf": None if i.model_leaf is None else int(i.model_leaf),
                 "confidence": None if i.confidence is None else float(i.confidence),
                 "model_version": str(i.model_version), "reason": i.reason, "text_key": k,
                 "priority": i.priority, "skips": 0, "enqueued_at": now,
                 "group_id": None if i.group_id is None else int(i.group_id)}
                for i, k in zip(items, keys)]
        dialect = self._dialect_insert()
        added: set[int] = set()
        with self._tx(write=True) as conn:
            for start in range(0, len(rows), CHUNK):
                stmt = dialect(queue).on_conflict_do_nothing().returning(queue.c.product_id)
                added |= set(conn.execute(stmt, rows[start:start + CHUNK]).scalars())
            self._settle_groups(conn, [i for i in items if i.product_id in added and i.group_id is not None], added)
        return len(added)

    def fresh(self, items: Iterable[QueueItem]) -> list[QueueItem]:
        """The items `enqueue` would add now: not queued yet, their normalised text not decided."""
        items = list(items)
        keys = text_keys([i.snapshot for i in items])
        decided = set(self.decided_leaves([k for k in keys if k]))
        ids = [int(i.product_id) for i in items]
        queued: set[int] = set()
        with self._tx(write=False) as conn:
            for start in range(0, len(ids), CHUNK):
                queued |= set(conn.execute(select(queue.c.product_id).where(
                    queue.c.dataset == self.dataset, queue.c.product_id.in_(ids[start:start + CHUNK]))).scalars())
        return [i for i, k in zip(items, keys) if (k is None or k not in decided) and int(i.product_id) not in queued]

    def _settle_groups(self, conn, grouped: list[QueueItem], added: set[int]) -> None:
        """The groups of the rows just added: a lead that cannot lead (see `enqueue`) or has no room leaves
        its new members alone; a lead gets its group id and the priority of its group's size."""
        by_lead: dict[int, list[QueueItem]] = {}
        for item in grouped:
            if int(item.group_id) != int(item.product_id):
                by_lead.setdefault(int(item.group_id), []).append(item)
        leads = {int(i.product_id) for i in grouped if int(i.group_id) == int(i.product_id)}
        for lead_id in sorted(leads | set(by_lead)):
            new = by_lead.get(lead_id, [])
            row = conn.execute(select(queue).where(queue.c.dataset == self.dataset, queue.c.product_id == lead_id)
                               .with_for_update()).first()
            others = conn.execute(select(func.count()).select_from(queue).where(
                queue.c.dataset == self.dataset, queue.c.group_id == lead_id, queue.c.product_id != lead_id,
                queue.c.decision_id.is_(None), queue.c.product_id.notin_([int(i.product_id) for i in new] or [-1])
            )).scalar_one()
            can_lead = row is not None and row.decision_id is None and row.reason == FLAGGED and (
                lead_id in added or (row.claimed_by is None and row.group_id in (None, lead_id)))
            room = MAX_MEMBERS - int(others) if can_lead else 0
            alone = [int(i.product_id) for i in new[max(room, 0):]]
            if alone:
                conn.execute(update(queue).where(queue.c.dataset == self.dataset, queue.c.product_id.in_(alone))
                             .values(group_id=None))
            if row is None or not can_lead:
                continue
            size = 1 + int(others) + min(len(new), max(room, 0))
            order = (new[0] if new else next(i for i in grouped if int(i.product_id) == lead_id)).order
            values = {"group_id": lead_id if size > 1 else None}
            if order != "arrival":
                values["priority"] = priority(order, row.reason, lead_id, row.confidence, size)
            conn.execute(update(queue).where(queue.c.dataset == self.dataset, queue.c.product_id == lead_id)
                         .values(**values))

    def open_heads(self, limit: int) -> list[dict]:
        """The newest `limit` open, unclaimed flagged products that are alone or lead a group, and may lead new
        members: [{product_id, title, members (open members now)}]."""
        m = queue.alias("m")
        members = (select(func.count()).where(m.c.dataset == queue.c.dataset, m.c.group_id == queue.c.product_id,
                                              m.c.product_id != queue.c.product_id, m.c.decision_id.is_(None))
                   .scalar_subquery())
        with self._tx(write=False) as conn:
            rows = conn.execute(select(queue.c.product_id, queue.c.snapshot, members).where(
                queue.c.dataset == self.dataset, queue.c.decision_id.is_(None), queue.c.claimed_by.is_(None),
                queue.c.reason == FLAGGED, or_(queue.c.group_id.is_(None), queue.c.group_id == queue.c.product_id))
                .order_by(queue.c.enqueued_at.desc(), queue.c.product_id).limit(int(limit))).all()
        return [{"product_id": int(r[0]), "title": (r[1] or {}).get("title"), "members": int(r[2])} for r in rows]

    def _dialect_insert(self):
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        return dialect_insert

    def claim_next(self, reviewer: str, ttl_s: float | None = None) -> dict | None:
        """The product `reviewer` should decide now, held for `ttl_s` seconds: the reviewer's own live claim
        (a reloaded page shows the same product; after an undo, the undone one), else the open product with
        the lowest priority that nobody holds (a claim past its time is free again); skipped products come
        after the others. A group's lead comes with its open members (`members`, held too). None when nothing
        is left."""
        reviewer = _name(reviewer, "reviewer")
        ttl = default_ttl() if ttl_s is None else float(ttl_s)
        with self._tx(write=True, durable=False) as conn:  # a claim lost to a power cut is free again
            now = time.time()
            open_ = and_(queue.c.dataset == self.dataset, queue.c.decision_id.is_(None), visible())
            mine = (select(queue).where(open_, queue.c.claimed_by == reviewer, queue.c.claim_expires > now)
                    .order_by(queue.c.claimed_at.desc()).limit(1).with_for_update())
            row = conn.execute(mine).first()
            if row is None:
                free = or_(queue.c.claimed_by.is_(None), queue.c.claim_expires <= now)
                nxt = (select(queue).where(open_, free)
                       .order_by(queue.c.skips, queue.c.priority, queue.c.product_id)
                       .limit(1).with_for_update(skip_locked=True))
                row = conn.execute(nxt).first()
            if row is None:
                return None
            members = self._members(conn, row)
            claim = {"claimed_by": reviewer, "claimed_at": now, "claim_expires": now + ttl}
            conn.execute(update(queue).where(queue.c.dataset == self.dataset, queue.c.product_id.in_(
                [row.product_id] + [m["product_id"] for m in members])).values(**claim))
            return dict(row._mapping) | claim | {"members": [m | claim for m in members]}

    def _members(self, conn, row) -> list[dict]:
        """The open members of a lead's group (its queue row), in the queue's order, locked."""
        return [dict(m._mapping) for m in conn.execute(select(queue).where(
            queue.c.dataset == self.dataset, queue.c.group_id == row.product_id,
            queue.c.product_id != row.product_id, queue.c.decision_id.is_(None))
            .order_by(queue.c.priority, queue.c.product_id).with_for_update())]

    def item(self, product_id: int) -> dict | None:
        """A queued product's row (its fields, suggestions, claim and standing decision), None if not queued."""
        with self._tx(write=False) as conn:
            row = conn.execute(select(queue).where(queue.c.dataset == self.dataset,
                                                   queue.c.product_id == int(product_id))).first()
        return None if row is None else dict(row._mapping)

    # -- decisions -----------------------------------------------------------------------------------------
    def decide(self, product_id: int, chosen_leaf: int | None, action: str, reviewer: str,
               idempotency_key: str, excluded: Iterable[int] = ()) -> dict:
        """Record a decision on a queued product: `accept` (a suggestion; `chosen_leaf` None: the model's
        leaf), `correct` (another leaf) or `skip` (no leaf; the product goes behind the others). Stored and
        committed before it returns; the same `idempotency_key` again returns the first decision.
        A group's lead: its members take the same leaf (a row each, `accept` where it is their model's leaf,
        else `correct`; a skip moves the whole group back), except the `excluded` members, which are queued
        alone again. Returns the lead's decision."""
        reviewer, key = _name(reviewer, "reviewer"), _name(idempotency_key, "idempotency key")
        try:
            excluded = sorted({int(e) for e in excluded})
        except (TypeError, ValueError):
            raise DataError(f"excluded members must be product ids (got {excluded!r})") from None
        if action not in ACTIONS:
            raise DataError(f"action {action!r} is not allowed (allowed: {', '.join(ACTIONS)}; undo has its own call)")
        if action == SKIP:
            chosen_leaf = None
        elif chosen_leaf is not None:
            chosen_leaf = self.check_leaf(chosen_leaf)
        elif action == CORRECT:
            raise DataError("a correction needs the chosen leaf (category_id)")
        return self._retry(lambda conn: self._decide(conn, int(product_id), chosen_leaf, action, reviewer, key,
                                                     excluded))

    def _decide(self, conn, product_id, chosen_leaf, action, reviewer, key, excluded) -> dict:
        row = conn.execute(select(queue).where(queue.c.dataset == self.dataset, queue.c.product_id == product_id)
                           .with_for_update()).first()
        earlier = self._by_key(conn, key)
        if earlier is not None:
            _owned(earlier, reviewer, key)
            if earlier["product_id"] != product_id or earlier["action"] == UNDO:
                raise Conflict(f"idempotency key {key!r} was already used for another request "
                               f"({earlier['action']} of product {earlier['product_id']})")
            return earlier
        if row is None:
            raise DataError(f"product {product_id} is not in the review queue of {self.name}")
        if row.decision_id is not None:
            raise Conflict(f"product {product_id} is already decided (decision {row.decision_id}); undo it first")
        now = time.time()
        if row.claimed_by not in (None, reviewer) and (row.claim_expires or 0) > now:
            raise Conflict(f"product {product_id} is held by reviewer {row.claimed_by!r} for another "
                           f"{row.claim_expires - now:.0f}s")
        if row.group_id not in (None, product_id) and conn.execute(select(queue.c.product_id).where(
                queue.c.dataset == self.dataset, queue.c.product_id == row.group_id,
                queue.c.decision_id.is_(None))).first() is not None:
            raise Conflict(f"product {product_id} is decided with its group: decide its lead, product {row.group_id}")
        members = self._members(conn, row)
        unknown = sorted(set(excluded) - {m["product_id"] for m in members})
        if unknown:
            known = ", ".join(str(m["product_id"]) for m in members) or "none"
            raise DataError(f"excluded product(s) {', '.join(map(str, unknown))} are not open members of product "
                            f"{product_id}'s group (its members: {known})")
        if action == ACCEPT and chosen_leaf is None:
            if row.model_leaf is None:
                raise DataError(f"product {product_id} has no model leaf to accept: choose a leaf")
            chosen_leaf = self.check_leaf(row.model_leaf)
        free = {"claimed_by": None, "claimed_at": None, "claim_expires": None}
        if excluded:  # queued alone again, at their own priority
            conn.execute(update(queue).where(queue.c.dataset == self.dataset, queue.c.product_id.in_(excluded))
                         .values(group_id=None, **free))
        members = [m for m in members if m["product_id"] not in excluded]
        group = product_id if members else None
        decision = self._record(conn, row, action, reviewer, key, chosen_leaf, None, now, group)
        done = {"decision_id": decision["id"]} if action != SKIP else {"skips": queue.c.skips + 1}
        conn.execute(update(queue).where(queue.c.dataset == self.dataset, queue.c.product_id == product_id)
                     .values(**free, **done))
        for m in members:
            where = (queue.c.dataset == self.dataset, queue.c.product_id == m["product_id"])
            if action == SKIP:  # the group goes behind the others with its lead
                conn.execute(update(queue).where(*where).values(**free))
                continue
            own = ACCEPT if chosen_leaf == m["model_leaf"] else CORRECT
            done = self._record(conn, SimpleNamespace(**m), own, reviewer, member_key(key, m["product_id"]),
                                chosen_leaf, None, now, group)
            conn.execute(update(queue).where(*where).values(decision_id=done["id"], **free))
        return decision

    def _record(self, conn, row, action, reviewer, key, chosen_leaf, undoes, now, group=None) -> dict:
        """Append one decision (the product's snapshot and the model's view copied from its queue row;
        `group`: the lead's product id of a group decision)."""
        values = {"dataset": self.dataset, "product_id": row.product_id, "snapshot": row.snapshot,
                  "model_leaf": row.model_leaf, "model_confidence": row.confidence,
                  "model_version": row.model_version, "reason": row.reason, "text_key": row.text_key,
                  "chosen_leaf": chosen_leaf, "action": action, "reviewer": reviewer, "undoes": undoes,
                  "idempotency_key": key, "at": now, "group_id": group}
        new_id = conn.execute(insert(decisions).values(**values)).inserted_primary_key[0]
        return {"id": int(new_id)} | values

    def _by_key(self, conn, key: str) -> dict | None:
        row = conn.execute(select(decisions).where(decisions.c.idempotency_key == key)).first()
        return None if row is None else dict(row._mapping)

    def check_leaf(self, leaf) -> int:
        """`leaf` as an int, if it is a leaf of the dataset's tree (else DataError)."""
        if self.tree is None:
            raise DataError("the review store was opened without the category tree: decisions cannot be checked")
        try:
            leaf = int(leaf)
        except (TypeError, ValueError):
            raise DataError(f"chosen leaf {leaf!r} is not a category id") from None
        if leaf not in self.tree:
            raise DataError(f"chosen leaf {leaf} is not a category of {self.name}'s tree")
        if not self.tree.is_leaf(leaf):
            raise DataError(f"chosen category {leaf} ({self.tree.title_path(leaf)}) is not a leaf: choose one of "
                            "its leaves")
        return leaf

    def undo(self, reviewer: str, idempotency_key: str, ttl_s: float | None = None) -> dict:
        """Cancel `reviewer`'s last decision that is not undone yet (an undo row of its own: the record is
        never changed). Its product returns to the queue, held by the reviewer. A group decision is undone
        whole (an undo row per product; the members return with their lead). Returns the undo row (of the
        lead; the same key again: the same row). Nothing to undo: Conflict."""
        reviewer, key = _name(reviewer, "reviewer"), _name(idempotency_key, "idempotency key")
        ttl = default_ttl() if ttl_s is None else float(ttl_s)
        return self._retry(lambda conn: self._undo(conn, reviewer, key, ttl))

    def _undo(self, conn, reviewer, key, ttl) -> dict:
        earlier = self._by_key(conn, key)
        if earlier is not None:
            _owned(earlier, reviewer, key)
            if earlier["action"] != UNDO:
                raise Conflict(f"idempotency key {key!r} was already used for another request "
                               f"({earlier['action']} of product {earlier['product_id']})")
            return earlier
        u = decisions.alias("u")
        last = conn.execute(select(decisions).where(
            decisions.c.dataset == self.dataset, decisions.c.reviewer == reviewer, decisions.c.action.in_(ACTIONS),
            ~exists().where(u.c.undoes == decisions.c.id)).order_by(decisions.c.id.desc()).limit(1)).first()
        if last is None:
            raise Conflict(f"reviewer {reviewer!r} has no decision to undo in {self.name}")
        rows = [last]
        if last.group_id is not None:  # the rows of one group decision: one transaction, one time
            rows = conn.execute(select(decisions).where(
                decisions.c.dataset == self.dataset, decisions.c.reviewer == reviewer,
                decisions.c.group_id == last.group_id, decisions.c.at == last.at,
                decisions.c.action.in_(ACTIONS), ~exists().where(u.c.undoes == decisions.c.id))
                .order_by(decisions.c.id)).all()
        now = time.time()
        lead = next((r for r in rows if r.product_id == last.group_id), last)
        for done in rows:
            own = key if done is lead else member_key(key, done.product_id)
            undo = self._undo_one(conn, done, reviewer, own, ttl, now)
            if done is lead:
                answer = undo
        return answer

    def _undo_one(self, conn, last, reviewer, key, ttl, now) -> dict:
        """Record the undo of one decision row; its product is open again, held by the reviewer."""
        where = (queue.c.dataset == self.dataset, queue.c.product_id == last.product_id)
        row = conn.execute(select(queue).where(*where).with_for_update()).first()
        undo = self._record(conn, row, UNDO, reviewer, key, None, last.id, now, last.group_id)
        values = {"skips": func.max(queue.c.skips - 1, 0) if not self.postgres
                  else func.greatest(queue.c.skips - 1, 0)} if last.action == SKIP else {}
        if row.decision_id == last.id:
            values["decision_id"] = None
        if row.decision_id is None or row.decision_id == last.id:  # open again: the reviewer holds it
            values |= {"claimed_by": reviewer, "claimed_at": now, "claim_expires": now + ttl}
        if values:
            conn.execute(update(queue).where(*where).values(**values))
        return undo

    # -- what was decided -----------------------------------------------------------------------------
    def decided_leaves(self, keys: Iterable[str]) -> dict[str, dict]:
        """{text key: the latest standing decision on a product with that normalised text} for the keys
        that have one."""
        keys = sorted({k for k in keys if k})
        out: dict[str, dict] = {}
        with self._tx(write=False) as conn:
            for start in range(0, len(keys), CHUNK):
                rows = conn.execute(select(decisions).where(
                    decisions.c.dataset == self.dataset, decisions.c.text_key.in_(keys[start:start + CHUNK]),
                    standing()).order_by(decisions.c.id)).all()
                out |= {r.text_key: dict(r._mapping) for r in rows}  # the latest of each key wins
        return out

    def decided_leaf(self, text_key: str) -> dict | None:
        """The latest standing decision on a product with this normalised text (items.text_keys), or None."""
        return self.decided_leaves([text_key]).get(text_key)

    def counters(self) -> dict:
        """done (products decided), left (still open), skipped (open, skipped at least once), suggestion-1
        accepted (decided in the model's leaf: count and share), audit (audit products decided) and audit
        precision (their share decided in the model's leaf: what goes through unreviewed really reaches)."""
        decided = queue.c.decision_id.isnot(None)
        top1 = decided & (decisions.c.chosen_leaf == queue.c.model_leaf)
        audit = decided & (queue.c.reason == AUDIT)

        def total(cond):
            return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

        stmt = (select(total(decided), total(queue.c.decision_id.is_(None)),
                       total(queue.c.decision_id.is_(None) & (queue.c.skips > 0)), total(top1), total(audit),
                       total(audit & (decisions.c.chosen_leaf == queue.c.model_leaf)))
                .select_from(queue.outerjoin(decisions, decisions.c.id == queue.c.decision_id))
                .where(queue.c.dataset == self.dataset))
        with self._tx(write=False) as conn:
            done, left, skipped, top1_n, audit_n, audit_ok = (int(v) for v in conn.execute(stmt).one())
        return {"done": done, "left": left, "skipped": skipped, "suggestion1_accepted": top1_n,
                "suggestion1_share": top1_n / done if done else None, "audit_decided": audit_n,
                "audit_precision": audit_ok / audit_n if audit_n else None}

    def version(self) -> int:
        """The latest decision's id (0: none): it changes with every decision and every undo."""
        with self._tx(write=False) as conn:
            return int(conn.execute(select(func.coalesce(func.max(decisions.c.id), 0))
                                    .where(decisions.c.dataset == self.dataset)).scalar_one())

    def decisions_frame(self) -> pd.DataFrame:
        """Every decision of the dataset, oldest first (the append-only record, undos and skips included)."""
        with self._tx(write=False) as conn:
            rows = conn.execute(select(decisions).where(decisions.c.dataset == self.dataset)
                                .order_by(decisions.c.id)).all()
        return pd.DataFrame([dict(r._mapping) for r in rows], columns=[c.name for c in decisions.columns])

    def export_training_rows(self) -> pd.DataFrame:
        """The decisions as training rows in the task's train.parquet layout (id, title, short_description,
        name_value_characteristics, rating, feedback_quantity, category_id): per product its latest
        standing decision (skips and undone decisions left out), from the snapshot taken when queued."""
        from prodcat.data.dataset import TRAIN_COLUMNS, validate_products

        frame = self.decisions_frame()
        undone = set(frame["undoes"].dropna().astype("int64").tolist())
        keep = frame[frame["action"].isin(CHOICES) & ~frame["id"].isin(undone)]
        keep = keep.drop_duplicates("product_id", keep="last").sort_values("product_id")
        if self.tree is not None:  # never exported into a tree where the leaf is not a leaf
            keep = keep.loc[np.array([self.tree.is_leaf(leaf) for leaf in keep["chosen_leaf"]], dtype=bool)]
        out = pd.DataFrame(keep["snapshot"].tolist(), columns=list(SNAPSHOT_FIELDS))
        out.insert(0, "id", keep["product_id"].astype("int64").to_numpy())
        out["category_id"] = keep["chosen_leaf"].astype("int64").to_numpy()
        return validate_products(out, f"review store {masked(self.url)}", TRAIN_COLUMNS)


    # -- the reviewers' sessions (one table for every dataset: session ids are random) ---------------------
    def end_session(self, session_id: str, reviewer: str, expires_at: float) -> None:
        """Record a signed-out session: every worker and replica sharing this store refuses its cookie from
        now on. Rows of sessions past their own expiry (their cookies are refused anyway) are dropped."""
        session_id, reviewer = _name(session_id, "session id"), _name(reviewer, "reviewer")
        now = time.time()
        with self._tx(write=True) as conn:
            conn.execute(delete(sessions_ended).where(sessions_ended.c.expires_at < now))
            conn.execute(self._dialect_insert()(sessions_ended).values(
                session_id=session_id, reviewer=reviewer, ended_at=now, expires_at=float(expires_at))
                .on_conflict_do_nothing())

    def session_ended(self, session_id: str) -> bool:
        """Whether the session was signed out (end_session)."""
        with self._tx(write=False) as conn:
            return conn.execute(select(sessions_ended.c.session_id)
                                .where(sessions_ended.c.session_id == str(session_id))).first() is not None


def _owned(earlier: dict, reviewer: str, key: str) -> None:
    """An idempotency key belongs to the reviewer who first used it: another reviewer's reuse is a Conflict
    that names nothing of the first request (never its product, decision or reviewer)."""
    if earlier["reviewer"] != reviewer:
        raise Conflict(f"idempotency key {key!r} belongs to another reviewer's request: send a fresh key")


def _name(value, what: str) -> str:
    """A reviewer name or an idempotency key: a non-empty string of at most 200 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise DataError(f"{what} must be a non-empty string of at most 200 characters (got {value!r})")
    return value
