"""OOF scores of every finished model of a dataset: hF1, weighted F1, accuracy."""
from __future__ import annotations

import pandas as pd

from prodcat.cv import finished_models
from prodcat.metrics import score
from prodcat.probs import TopK
from prodcat.run import Run


def load_oof(run: Run, name: str) -> TopK:
    return TopK.load(run.paths.oof(name) / "oof.npz").align(run.ds.train["id"].to_numpy())


def load_test(run: Run, name: str) -> TopK:
    return TopK.load(run.paths.oof(name) / "test.npz").align(run.ds.test["id"].to_numpy())


def score_oof(run: Run, oof: TopK) -> dict:
    """Scores on the products the model predicted, and how many it could not (e.g. no photo)."""
    y = run.ds.train["category_id"].to_numpy()
    have = ~oof.missing
    return score(y[have], oof.top1()[have], run.ds.tree) | {"missing": int(oof.missing.sum())}


def score_table(run: Run, names: list[str] | None = None) -> pd.DataFrame:
    rows = []
    for name in names if names is not None else finished_models(run):
        rows.append({"model": name} | score_oof(run, load_oof(run, name)))
    cols = ["model", "hF1", "weighted_F1", "accuracy", "n", "missing"]
    return pd.DataFrame(rows, columns=cols)


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "no finished models yet: run `./run.sh train MODEL` first"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
