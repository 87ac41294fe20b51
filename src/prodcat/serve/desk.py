"""The review desk of the service: its reviewers (`review.reviewers_file`: one 'NAME KEY' per line), the review
store of the models' dataset (prodcat.review; `review.url`, by default <workdir>/review/<dataset>/review.db
beside <workdir>/models/<dataset>/), and what the service does with them - queue the products a request
flags (and the audit sample), answer a product whose text a person already decided with that decision.
No reviewers configured: no desk (the page answers 404, predictions come from the models only)."""
from __future__ import annotations

import hmac
import shutil
import threading
from pathlib import Path

import pandas as pd

from prodcat.errors import SettingsError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


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
        if parts[1] in reviewers:
            raise SettingsError(f"review.reviewers_file: {path}, line {number}: a key given twice")
        reviewers[parts[1]] = parts[0]
    return reviewers


def store_url(models_dir: Path, url: str) -> str:
    """review.url; 'auto': the SQLite file of the models' workdir and dataset (outputs.Paths.review_db)."""
    from prodcat.outputs import Paths

    if url != "auto":
        return url
    path = Paths(Path(models_dir).resolve().parent.parent, Path(models_dir).name).review_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class ReviewDesk:
    """The reviewers, the store (opened at first use, one per process) and the photos of queued products."""

    def __init__(self, models_dir: Path, review: dict):
        self.settings = review
        self.reviewers = read_reviewers(review["reviewers_file"])
        self.models_dir = Path(models_dir)
        self._store = None
        self._opening = threading.Lock()

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

    def store(self, tree):
        from prodcat.review.store import ReviewStore

        with self._opening:
            if self._store is None:
                url = store_url(self.models_dir, self.settings["url"])
                self._store = ReviewStore(url, self.models_dir.name, tree)
            return self._store

    def photos_dir(self) -> Path:
        return self.models_dir.resolve().parent.parent / "review" / self.models_dir.name / "photos"

    def queue(self, table: pd.DataFrame, frame: pd.DataFrame, version: str, tree) -> dict:
        """Queue a request's flagged products and audit sample; their photos (a request's temporary files)
        are kept beside the store first."""
        from prodcat.review.queue import queue_predictions

        frame = frame.copy()
        if "image_path" in frame.columns:
            kept = []
            for pid, path in zip(frame["id"].tolist(), frame["image_path"].tolist()):
                if isinstance(path, str) and Path(path).is_file():
                    target = self.photos_dir() / f"{int(pid)}{Path(path).suffix.lower()}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    path = str(target)
                kept.append(path)
            frame["image_path"] = pd.Series(kept, dtype=object)
        return queue_predictions(self.store(tree), table, frame, float(self.settings["audit_share"]), version)

    def decided(self, frame: pd.DataFrame, tree) -> dict[int, dict]:
        """{row of the frame: the standing decision on a product with that row's normalised text}."""
        from prodcat.review.items import snapshots, text_keys

        keys = text_keys(snapshots(frame))
        found = self.store(tree).decided_leaves(k for k in keys if k)
        return {row: found[key] for row, key in enumerate(keys) if key in found}

    def photo(self, product_id: int, tree) -> Path | None:
        """The photo of a queued product (its snapshot's file, when it is an image file that exists)."""
        item = self.store(tree).item(product_id)
        path = (item or {}).get("snapshot", {}).get("image_path")
        if isinstance(path, str) and Path(path).suffix.lower() in PHOTO_SUFFIXES and Path(path).is_file():
            return Path(path)
        return None


def apply_decisions(body: dict, decided: dict[int, dict], tree) -> None:
    """Answer the products people already decided with their decision: source `review`, confidence 1, no
    review needed (the model's alternatives are kept)."""
    for row, decision in decided.items():
        leaf = int(decision["chosen_leaf"])
        body["predictions"][row] |= {"predicted_category_id": leaf, "confidence": 1.0, "needs_review": False,
                                     "category_path": tree.title_path(leaf) if leaf in tree else "",
                                     "source": "review"}
