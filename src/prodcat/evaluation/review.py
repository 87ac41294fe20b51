"""The review logic in one place: the out-of-fold confidences a model keeps beside its saved children, the
threshold that reaches a target precision of the auto-accepted products, coverage curves and the review
table of `scores` (top-k accuracy, calibration, the share auto-accepted at 95 / 98 / 99 % precision)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.evaluation.metrics import hf1_of_counts
from prodcat.outputs import CONFIDENCE_FILE
from prodcat.probs import TopK

REVIEW_PRECISIONS = (0.95, 0.98, 0.99)


def save_confidence(run, oof: TopK, folder: Path, name: str = CONFIDENCE_FILE) -> None:
    """OOF confidence and correctness beside the saved model: `predict --min-precision` picks its threshold
    from them without the training data."""
    from prodcat.evaluation.metrics import hierarchical_counts
    from prodcat.storage import write_npz

    y = run.ds.train["category_id"].to_numpy()
    pred = oof.top1()
    have = ~oof.missing
    counts = np.zeros((len(y), 3), np.int32)
    if have.any():
        counts[have] = hierarchical_counts(y[have], pred[have], run.ds.tree)
    write_npz({"confidence": oof.scores[:, 0].astype(np.float32), "correct": (pred == y) & have,
               "missing": ~have, "hcounts": counts}, folder / name)


def load_confidence(folder: Path, name: str = CONFIDENCE_FILE) -> dict[str, np.ndarray] | None:
    """What `save_confidence` kept (None when absent)."""
    path = Path(folder) / name
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def oof_quality(folder: Path) -> float:
    """OOF hF1 of a saved model from its kept confidences (NaN when absent)."""
    kept = load_confidence(folder)
    return float("nan") if kept is None else float(np.nan_to_num(hf1_of_counts(kept["hcounts"])))


def pick_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float, z: float = 1.645
                   ) -> tuple[float, float, float]:
    """The lowest confidence threshold whose accepted products (confidence >= threshold) reach `precision`
    with a one-sided 95 % Wilson lower bound, so that it holds on new products, not only on these.
    Returns (threshold, coverage, precision on these products); threshold inf when no threshold does.
    `precision` comes from a checked ReviewRule (prodcat.review_rule) or a fixed table of them."""
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order].astype(np.float64), correct[order].astype(np.float64)
    n = np.arange(1, len(conf) + 1)
    p = np.cumsum(ok) / n
    lower = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    last = np.r_[conf[1:] != conf[:-1], True]  # a threshold accepts every product of equal confidence
    good = np.flatnonzero((lower >= precision) & last)
    if not len(good):
        return float("inf"), 0.0, float("nan")
    i = good[-1]
    return float(conf[i]), float(n[i] / len(conf)), float(p[i])


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, hcounts: np.ndarray | None = None,
                   thresholds=None) -> pd.DataFrame:
    """Per threshold: share of products auto-accepted (confidence >= threshold), their accuracy and hF1."""
    thresholds = np.round(np.arange(0.0, 1.0, 0.05), 2) if thresholds is None else np.asarray(thresholds)
    rows = []
    for t in thresholds:
        acc = confidence >= t
        row = {"threshold": float(t), "coverage": float(acc.mean()) if len(acc) else np.nan,
               "accuracy": float(correct[acc].mean()) if acc.any() else np.nan}
        if hcounts is not None:
            row["hF1"] = hf1_of_counts(hcounts[acc])
        rows.append(row)
    return pd.DataFrame(rows)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=correct, minlength=bins) - np.bincount(which, weights=confidence,
                                                                                  minlength=bins))
    return float(gap.sum() / total.sum())


def review_table(run, preds: dict[str, TopK]) -> pd.DataFrame:
    """Per model of `preds` (OOF TopK, e.g. scores.comparison_predictions): top-1/3/5 accuracy, expected
    calibration error of the top probability and the share of products auto-accepted at the threshold
    `predict --min-precision P` would pick (OOF rows)."""
    y = run.ds.train["category_id"].to_numpy()
    rows = []
    for name, oof in preds.items():
        have = ~oof.missing
        hit = oof.labels == y[:, None]
        conf = oof.scores[:, 0].astype(np.float64)
        correct = hit[:, 0] & have
        row = {"model": name} | {f"top{k}": float(hit[have, :k].any(axis=1).mean()) for k in (1, 3, 5)}
        row["ECE"] = expected_calibration_error(conf[have], correct[have])
        for p in REVIEW_PRECISIONS:
            row[f"cover@{p:g}"] = pick_threshold(conf, correct, p)[1]
        rows.append(row)
    return pd.DataFrame(rows)
