"""Comparison plots of the stored OOF probabilities (PNG under reports/<dataset>/).

scores.png      hF1, weighted F1 and accuracy of every base model, the plain average and the stacker
top_level.png   OOF hF1 per top-level category and model (heatmap)
calibration.png reliability of the top probability: accuracy of the top class per confidence bin
coverage.png    share of products auto-accepted at a confidence threshold vs their accuracy (review.csv:
                top-1/3/5 accuracy, calibration error, coverage at 95/98/99 % precision)
The notebook notebooks/compare_oof.ipynb draws the same figures with these functions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.probs import TopK
from prodcat.training.run import Run


def _plt():
    import matplotlib.pyplot as plt

    return plt


def scores_figure(table: pd.DataFrame, dataset: str = ""):
    plt = _plt()
    metrics = ["hF1", "weighted_F1", "accuracy"]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(table) + 2), 4.2))
    width = 0.8 / len(metrics)
    x = np.arange(len(table))
    for i, m in enumerate(metrics):
        bars = ax.bar(x + (i - 1) * width, table[m], width, label=m)
        for b, v in zip(bars, table[m]):
            ax.annotate(f"{v:.3f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    lo = float(np.nanmin(table[metrics].to_numpy())) if len(table) else 0.0
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_xticks(x, table["model"])
    ax.set_ylabel("OOF score")
    ax.set_title(f"OOF scores per model{' - ' + dataset if dataset else ''}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def top_level_figure(table: pd.DataFrame, max_rows: int = 40, dataset: str = ""):
    plt = _plt()
    models = [c for c in table.columns if c not in ("top_level", "title", "n")]
    part = table.head(max_rows)
    values = part[models].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(models), 1.2 + 0.32 * len(part)))
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=np.nanmin(values) if values.size else 0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if v < np.nanmean(values) else "black")
    ax.set_xticks(range(len(models)), models)
    ax.set_yticks(range(len(part)), [f"{str(t)[:30]} ({n})" for t, n in zip(part["title"], part["n"])], fontsize=7)
    ax.set_title(f"OOF hF1 per top-level category{' - ' + dataset if dataset else ''}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def calibration_table(preds: dict[str, TopK], y: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per model and confidence bin of the top probability: mean confidence, accuracy, count."""
    rows = []
    edges = np.linspace(0, 1, bins + 1)
    for name, p in preds.items():
        have = ~p.missing
        conf = p.scores[have, 0].astype(float)
        hit = p.top1()[have] == y[have]
        which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
        for b in range(bins):
            sel = which == b
            if sel.any():
                rows.append({"model": name, "bin": b, "confidence": conf[sel].mean(), "accuracy": hit[sel].mean(),
                             "n": int(sel.sum())})
    return pd.DataFrame(rows, columns=["model", "bin", "confidence", "accuracy", "n"])


def calibration_figure(table: pd.DataFrame, dataset: str = ""):
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for name, part in table.groupby("model", sort=False):
        ax.plot(part["confidence"], part["accuracy"], marker="o", ms=3, label=name)
        ax2.plot(part["confidence"], part["n"] / part["n"].sum(), marker="o", ms=3, label=name)
    ax.set_xlabel("top probability (bin mean)")
    ax.set_ylabel("accuracy of the top class")
    ax.set_title(f"Calibration of the top probability{' - ' + dataset if dataset else ''}", fontsize=10)
    ax.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xlabel("top probability (bin mean)")
    ax2.set_ylabel("share of products")
    ax2.set_title("How confident the models are", fontsize=10)
    fig.tight_layout()
    return fig


def coverage_table(run: Run, preds: dict[str, TopK]) -> pd.DataFrame:
    """Per model and confidence threshold: share of products auto-accepted, their accuracy and hF1 (OOF)."""
    from prodcat.evaluation.metrics import hierarchical_counts
    from prodcat.evaluation.review import coverage_curve

    y = run.ds.train["category_id"].to_numpy()
    parts = [pd.DataFrame(columns=["model", "threshold", "coverage", "accuracy", "hF1"])]
    for name, p in preds.items():
        conf = np.where(p.missing, -1.0, p.scores[:, 0].astype(float))
        counts = hierarchical_counts(y, p.top1(), run.ds.tree)
        thresholds = np.round(np.r_[np.arange(0, 0.9, 0.05), np.arange(0.9, 1.0, 0.01)], 2)
        parts.append(coverage_curve(conf, p.top1() == y, counts, thresholds).assign(model=name))
    return pd.concat(parts, ignore_index=True)[["model", "threshold", "coverage", "accuracy", "hF1"]]


def coverage_figure(table: pd.DataFrame, dataset: str = ""):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, part in table.groupby("model", sort=False):
        ax.plot(part["coverage"], part["accuracy"], marker="o", ms=2, label=name)
    ax.set_xlabel("share of products auto-accepted (confidence >= threshold)")
    ax.set_ylabel("accuracy of the accepted products")
    ax.set_title(f"Coverage vs precision (OOF){' - ' + dataset if dataset else ''}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(run: Run) -> dict:
    """{'scores', 'top_level', 'calibration', 'coverage'} figures and the tables behind them."""
    from prodcat.evaluation.review import review_table
    from prodcat.training.scores import comparison_predictions, comparison_table, top_level_table

    preds = comparison_predictions(run)
    y = run.ds.train["category_id"].to_numpy()
    table = comparison_table(run, preds)
    top = top_level_table(run, preds)
    calib = calibration_table(preds, y)
    cover = coverage_table(run, preds) if preds else pd.DataFrame(columns=["model", "coverage", "accuracy"])
    return {"tables": {"scores": table, "top_level": top, "calibration": calib, "coverage": cover,
                       "review": review_table(run, preds)},
            "scores": scores_figure(table, run.ds.name), "top_level": top_level_figure(top, dataset=run.ds.name),
            "calibration": calibration_figure(calib, run.ds.name), "coverage": coverage_figure(cover, run.ds.name)}


def write_report(run: Run) -> list[Path]:
    import matplotlib

    from prodcat.errors import DataError
    from prodcat.storage import atomic_path, write_csv

    matplotlib.use("Agg")  # files only, no display needed
    plt = _plt()
    figs = figures(run)
    if figs["tables"]["scores"].empty:
        raise DataError(f"no finished models for dataset '{run.ds.name}': nothing to report")
    out = run.paths.reports
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("scores", "top_level", "calibration", "coverage"):
        path = out / f"{name}.png"
        with atomic_path(path) as tmp:
            figs[name].savefig(tmp, dpi=110, format="png")
        plt.close(figs[name])
        paths.append(path)
    for name, table in figs["tables"].items():
        write_csv(table, out / f"{name}.csv")
        paths.append(out / f"{name}.csv")
    return paths
