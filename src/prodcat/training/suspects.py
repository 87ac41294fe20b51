"""The catalogue's own labels, audited: training products whose label the out-of-fold predictions contradict
confidently (Cleanlab's confident learning, `cleanlab.filter.find_label_issues`, on the stacker's OOF
probabilities), ranked by the self-confidence of their label, lowest first.

The stored OOF predictions keep each product's top-k classes; the rest of a product's probability mass is
spread evenly over the other classes, so every product has a full row of probabilities (classes: the leaves
that have training products)."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from prodcat.errors import DataError
from prodcat.outputs import STACK
from prodcat.training.oof import base_models, finished_models, load_oof
from prodcat.training.run import Run


def dense_probabilities(labels: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(n, len(classes)) probabilities from top-k (labels, scores): the kept ones in place, the rest of each
    row's mass spread over its other classes."""
    n, k = labels.shape
    out = np.zeros((n, len(classes)), np.float32)
    col = np.searchsorted(classes, labels)
    known = (labels >= 0) & (col < len(classes)) & (classes[np.minimum(col, len(classes) - 1)] == labels)
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    np.add.at(out, (rows[known], col[known]), scores[known].astype(np.float32))
    kept = (out > 0).sum(axis=1)
    rest = np.clip(1.0 - out.sum(axis=1), 0.0, 1.0) / np.maximum(len(classes) - kept, 1)
    out += np.where(out > 0, 0.0, rest[:, None]).astype(np.float32)
    return out / out.sum(axis=1, keepdims=True)


def find_suspects(run: Run, model: str | None = None, filter_by: str | None = None,
                  min_probability: float | None = None) -> pd.DataFrame:
    """id, current leaf, suggested leaf (the OOF's top class), its OOF probability and the label's
    self-confidence (lower: more suspect) of every training product whose label confident learning finds
    wrong (cleanlab's `filter_by`), whose suggested leaf has at least `min_probability`, most suspect first.
    `model`: whose OOF (default: the stacker, else the best finished model); `filter_by`, `min_probability`:
    default the settings review.suspects_filter and review.suspects_min_probability."""
    done = finished_models(run)
    model = model or (STACK if STACK in done else (base_models(run) or [None])[0])
    if model is None or model not in done:
        raise DataError(f"no finished OOF predictions of {model or 'any model'} for {run.ds.name}: run ./run.sh all "
                        "first")
    oof = load_oof(run, model)
    y = run.ds.train["category_id"].to_numpy(np.int64)
    classes = np.unique(y)
    probs = dense_probabilities(oof.labels, oof.scores, classes)
    given = np.searchsorted(classes, y)
    settings = run.cfg["review"]
    filter_by = settings["suspects_filter"] if filter_by is None else filter_by
    min_probability = settings["suspects_min_probability"] if min_probability is None else min_probability
    issues, small = label_issues(given, probs, filter_by)
    top = probs.argmax(axis=1)
    issues = issues[probs[issues, top[issues]] >= min_probability]
    found = pd.DataFrame({"id": run.ds.train["id"].to_numpy()[issues], "current_category_id": y[issues],
                          "suggested_category_id": classes[top[issues]],
                          "suggested_probability": probs[issues, top[issues]],
                          "label_self_confidence": probs[issues, given[issues]]})
    found.attrs["small_classes"] = small  # leaves too small for every issue of theirs to be found
    return found


def label_issues(given: np.ndarray, probs: np.ndarray, filter_by: str) -> tuple[np.ndarray, int]:
    """(rows whose label confident learning finds wrong, most suspect first; how many classes were too small for
    all their issues to be found). Cleanlab's warnings about those classes become the count, not stderr; any
    other warning is passed on."""
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        issues = find_label_issues(given, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence",
                                   n_jobs=1)
    small = set()
    for w in caught:
        found = re.search(r"in class: (\d+)", str(w.message))
        if found:
            small.add(found.group(1))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return issues, len(small)
