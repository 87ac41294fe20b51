"""The review desk of the service: its reviewers (`review.reviewers_file`: one 'NAME KEY' per line), the review
store of the models' dataset (prodcat.review; `review.url`, by default <workdir>/review/<dataset>/review.db
beside <workdir>/models/<dataset>/), and what the service does with them - queue the products a request
flags (and the audit sample), answer a product whose text a person already decided with that decision.
No reviewers configured: no desk (the page answers 404, predictions come from the models only)."""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from prodcat.data.photos import FILE_SUFFIXES
from prodcat.errors import SettingsError
from prodcat.outputs import Paths
from prodcat.serve.security import SignInThrottle

log = logging.getLogger("prodcat.serve")
SESSION_S = 12 * 3600  # how long a reviewer stays signed in (unless they sign out)
SESSION_ID = re.compile(r"[0-9a-f]{32}")  # a session's random id (secrets.token_hex(16))
EXPIRY = re.compile(r"[0-9]{1,12}")


class Session(NamedTuple):
    """A well-signed, unexpired session token's contents."""
    reviewer: str
    session_id: str
    expiry: int


def read_reviewers(path: str | None) -> dict[str, str]:
    """{key: reviewer name} from the reviewers file (None: no reviewers)."""
    if path is None:
        return {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SettingsError(f"review.reviewers_file: {Path(path).resolve()}: {exc.strerror or exc}") from None
    reviewers: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) != 2 or len(parts[1]) < 8:
            raise SettingsError(f"review.reviewers_file: {path}, line {number}: expected 'NAME KEY' with a key of "
                                "at least 8 characters")
        if parts[1] in reviewers or parts[0] in reviewers.values():
            raise SettingsError(f"review.reviewers_file: {path}, line {number}: a key or a name given twice")
        reviewers[parts[1]] = parts[0]
    return reviewers


class ReviewDesk:
    """The reviewers, the store (opened at first use, one per process) and the photos of queued products."""

    def __init__(self, models_dir: Path, review: dict):
        self.settings = review
        self.reviewers = read_reviewers(review["reviewers_file"])
        self.models_dir = Path(models_dir)
        self._store = None
        self._opening = threading.Lock()
        self.throttle = SignInThrottle()  # wrong keys at sign-in, per client address and overall

    @property
    def enabled(self) -> bool:
        return bool(self.reviewers)

    def reviewer(self, key: str | None) -> str | None:
        """The reviewer whose key this is (compared in constant time with every key), else None."""
        found = None
        for known, name in self.reviewers.items():
            if key and hmac.compare_digest(key.encode(), known.encode()):
                found = name
        return found

    def session(self, name: str) -> str:
        """A signed-in reviewer's session token 'NAME.SESSION_ID.EXPIRY.MAC': a random session id (what
        sign-out records as ended, in the review store: ReviewStore.end_session) and an HMAC with the
        reviewer's own key (the key itself never travels again; a key removed from the reviewers file ends
        its sessions when the service restarts)."""
        session_id, expiry = secrets.token_hex(16), int(time.time()) + SESSION_S
        return f"{name}.{session_id}.{expiry}.{self._mac(name, session_id, expiry)}"

    def parse(self, token: str | None) -> Session | None:
        """The contents of a well-signed, unexpired session token, else None (whether it was signed out is
        the store's to say: ReviewStore.session_ended)."""
        parts = (token or "").rsplit(".", 3)
        if (len(parts) != 4 or not SESSION_ID.fullmatch(parts[1]) or not EXPIRY.fullmatch(parts[2])
                or int(parts[2]) < time.time()):
            return None
        mac = self._mac(parts[0], parts[1], int(parts[2]))
        if mac is None or not hmac.compare_digest(mac.encode(), parts[3].encode("utf-8", "replace")):
            return None
        return Session(parts[0], parts[1], int(parts[2]))

    def _mac(self, name: str, session_id: str, expiry: int) -> str | None:
        key = next((k for k, n in self.reviewers.items() if n == name), None)
        message = f"prodcat-review-session\n{name}\n{session_id}\n{expiry}"
        return None if key is None else hmac.new(key.encode(), message.encode(), "sha256").hexdigest()

    def store(self, tree):
        """The review store of the dataset and of `tree`, the tree the service answers under now (the
        `serve.tree` file when set, else the models' own): a reload onto another tree (`?new_tree=true`, an
        edited `serve.tree`) works in that tree's store; the old tree's decisions are kept there, never
        served or queued under the new one. A decision is checked against `tree` (ReviewStore.check_leaf):
        a newer tree's new leaves can be chosen, its removed ones cannot."""
        from prodcat.review.queue import store_url
        from prodcat.review.store import ReviewStore, scope_of

        with self._opening:
            scope = scope_of(self.models_dir.name, tree)
            if self._store is None or self._store.dataset != scope:
                url = store_url(self.settings["url"], Paths.of_models(self.models_dir))
                self._store = ReviewStore(url, self.models_dir.name, tree)
            return self._store

    def photos_dir(self) -> Path:
        return Paths.of_models(self.models_dir).review_db.parent / "photos"

    def queue(self, table: pd.DataFrame, frame: pd.DataFrame, version: str, tree) -> dict:
        """Queue a request's flagged products and audit sample; the photos of those (a request's temporary
        files) are kept beside the store first, named by their content (never overwritten)."""
        from prodcat.review.queue import queue_predictions, queued

        share = float(self.settings["audit_share"])
        frame = frame.copy()
        if "image_path" in frame.columns:
            wanted = np.logical_or(*queued(table, share))
            frame["image_path"] = pd.Series([self.keep_photo(path) if keep else None for path, keep
                                             in zip(frame["image_path"].tolist(), wanted)], dtype=object)
        return queue_predictions(self.store(tree), table, frame, share, version, self.settings)

    def keep_photo(self, path) -> str | None:
        """A copy of a request's photo under the review folder, named by its content hash (atomic)."""
        if not (isinstance(path, str) and Path(path).is_file()):
            return None
        data = Path(path).read_bytes()
        target = self.photos_dir() / f"{hashlib.sha256(data).hexdigest()[:32]}{Path(path).suffix.lower()}"
        if not target.exists():
            from prodcat.storage import atomic_path

            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        return str(target)

    def teach(self, predictor, tree) -> None:
        """The standing decisions of the store of `tree` (the tree the service answers under) join the models'
        memory (Predictor.remember) when they changed
        since the models last learned them: every worker and replica reads the same store, so they agree;
        an undone decision is forgotten. A store that cannot be read is logged and the models answer as
        they are."""
        from prodcat.review.db import StoreError
        from prodcat.review.queue import teach

        try:
            teach(predictor, self.store(tree))
        except StoreError as exc:
            log.warning("decisions not learned: %s", exc)

    def decided(self, frame: pd.DataFrame, tree) -> dict[int, dict]:
        """{row of the frame: the standing decision on a product with that row's normalised text}; a store
        that cannot be read is logged and the models answer alone."""
        from prodcat.review.db import StoreError
        from prodcat.review.items import snapshots, text_keys

        keys = text_keys(snapshots(frame))
        try:
            found = self.store(tree).decided_leaves(k for k in keys if k)
        except StoreError as exc:
            log.warning("answers from decisions skipped: %s", exc)
            return {}
        return {row: found[key] for row, key in enumerate(keys) if key in found}

    def photo(self, product_id: int, tree) -> Path | None:
        """The photo of a queued product (its snapshot's file, when it is an image file that exists)."""
        item = self.store(tree).item(product_id)
        path = (item or {}).get("snapshot", {}).get("image_path")
        if isinstance(path, str) and Path(path).suffix.lower() in FILE_SUFFIXES and Path(path).is_file():
            return Path(path)
        return None


def apply_decisions(body: dict, decided: dict[int, dict], tree) -> None:
    """Answer the products people already decided with their decision: source `review`, confidence 1, no
    review needed (the model's alternatives are kept)."""
    for row, decision in decided.items():
        leaf = int(decision["chosen_leaf"])
        if not tree.is_leaf(leaf):
            continue  # never answered with a node that is not a leaf of the tree that answers
        body["predictions"][row] |= {"predicted_category_id": leaf, "confidence": 1.0, "needs_review": False,
                                     "category_path": tree.shown_path(leaf), "tree_problem": None,
                                     "source": "review"}
