"""A request's products -> the Predictor -> the answer: the products become one frame that passes the one
check of products (`validate_products`, as a file would), their photos become temporary files, and the
Predictor's table becomes the response body - the same predictions `./run.sh predict` writes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from prodcat.data.dataset import NUMERIC_COLUMNS, TEXT_COLUMNS, validate_products
from prodcat.errors import SettingsError
from prodcat.probs import NO_LABEL
from prodcat.review_rule import ReviewRule
from prodcat.serve.loading import LoadedModels
from prodcat.serve.photos import PhotoFiles, from_base64


@dataclass(frozen=True)
class Ask:
    """How to answer a request: alternatives per product and the review rule."""

    top: int
    threshold: float | None
    min_precision: float | None


def ask_of(settings: dict, top: int | None = None, threshold: float | None = None,
           min_precision: float | None = None) -> Ask:
    """The request's own choices, else the service's: a request that gives a threshold or a minimal
    precision replaces the service's review rule (prodcat.review_rule checks it: both given is a
    UsageError, as for `predict`)."""
    rule = ReviewRule(threshold, min_precision)
    if not rule.given:
        rule = ReviewRule(settings["threshold"], settings["min_precision"], ("serve.threshold", "serve.min_precision"),
                          SettingsError)
    return Ask(top if top is not None else settings["top"], rule.threshold, rule.min_precision)


def product_frame(products: list, photos: PhotoFiles, item: str, uploaded: str | None = None) -> pd.DataFrame:
    """The request's products (pydantic objects, in order) as a checked frame; each photo a temporary file
    (`uploaded`: the path of a single product's uploaded photo). `item` names them in errors."""
    columns = {col: [getattr(p, col) for p in products] for col in ("id",) + TEXT_COLUMNS + NUMERIC_COLUMNS}
    columns = {col: (values if col not in NUMERIC_COLUMNS else [math.nan if v is None else v for v in values])
               for col, values in columns.items()}
    rows = range(len(products)) if item == "products" else [None]
    columns["image_path"] = pd.Series([photos.add(from_base64(p.photo, row), row) if p.photo is not None
                                       else uploaded for p, row in zip(products, rows)], dtype=object)  # as with_photos
    return validate_products(pd.DataFrame(columns), where=item)


def answer(models: LoadedModels, frame: pd.DataFrame, ask: Ask, keep: int = 0) -> tuple[dict, pd.DataFrame]:
    """(the response body, the Predictor's table) for a checked frame; the table holds at least `keep`
    alternatives (what a review queue keeps), as far as the models have them. Under a newer tree
    (`serve.tree`) the table is read under it as `predict --tree` reads it (prodcat.data.tree_change.under_tree:
    its paths; a prediction into a node that is not one of its leaves flagged and named) and its new leaves
    are among the zero-shot suggestions."""
    predictor = models.predictor
    predictor.check_top(ask.top, "top")
    table = predictor.predict(frame, max(ask.top, min(keep, predictor.top_k)), ask.threshold, ask.min_precision,
                              tree=models.newer)
    if models.newer is not None:
        from prodcat.data.tree_change import under_tree

        table = under_tree(table, models.newer)
    return {"model_version": models.version, "predictions": predictions(table, models.tree, ask.top)}, table


def predictions(table: pd.DataFrame, tree, top: int) -> list[dict]:
    """The Predictor's table as the response's predictions (a leaf that could not be predicted: null)."""
    paths: dict[int, str] = {}

    def path(category: int) -> str:
        if category not in paths:
            paths[category] = tree.shown_path(category)
        return paths[category]

    alternatives = [list(zip(table[f"top{j}_category_id"].tolist(), table[f"top{j}_probability"].tolist()))
                    for j in range(1, top + 1)]
    problems = table["tree_problem"].tolist() if "tree_problem" in table.columns else [None] * len(table)
    out = []
    for i, (pid, leaf, conf, kind, review, problem) in enumerate(zip(
            table["id"].tolist(), table["predicted_category_id"].tolist(), table["confidence"].tolist(),
            table["prediction_kind"].tolist(), table["needs_review"].tolist(), problems)):
        out.append({"id": pid, "predicted_category_id": None if leaf == NO_LABEL else leaf,
                    "confidence": None if math.isnan(conf) else conf, "category_path": path(leaf),
                    "alternatives": [{"category_id": c, "probability": p, "category_path": path(c)}
                                     for c, p in (alt[i] for alt in alternatives) if c != NO_LABEL],
                    "needs_review": bool(review), "prediction_kind": str(kind),
                    "tree_problem": problem if isinstance(problem, str) else None})
    return out
