"""Turn test probabilities into a validated submission parquet (id, predicted_category_id)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.errors import DataError
from prodcat.probs import NO_LABEL
from prodcat.run import Run
from prodcat.scores import load_test, score_table
from prodcat.storage import write_parquet


def ranked_models(run: Run) -> list[str]:
    """Finished models, best OOF hF1 first."""
    return score_table(run).sort_values("hF1", ascending=False)["model"].tolist()


def build_submission(run: Run, model: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Top-1 of `model` (default: the best OOF hF1); products it could not predict (e.g. the image model on
    a product without a photo) take the next best model's prediction. Returns the frame and the models used.
    Models are only scored (ranked) when they are needed."""
    from prodcat.cv import finished_models

    finished = finished_models(run)
    if not finished:
        raise DataError(f"no finished model for dataset '{run.ds.name}': train one first")
    if model is not None and model not in finished:
        raise DataError(f"model '{model}' has no finished test probabilities (finished: {', '.join(finished)})")
    ranked = None if model is not None else ranked_models(run)
    first = model or ranked[0]
    ids = run.ds.test["id"].to_numpy()
    pred = load_test(run, first).top1()
    used = [first]
    if (pred == NO_LABEL).any():
        for name in (ranked or ranked_models(run)):
            todo = pred == NO_LABEL
            if name == first or not todo.any():
                continue
            pred[todo] = load_test(run, name).top1()[todo]
            used.append(name)
    return pd.DataFrame({"id": ids, "predicted_category_id": pred}), used


def validate_submission(sub: pd.DataFrame, run: Run, where: str = "submission") -> None:
    """Every test id exactly once, every prediction a leaf of the tree."""
    if list(sub.columns) != ["id", "predicted_category_id"]:
        raise DataError(f"{where}: columns must be id, predicted_category_id (got {list(sub.columns)})")
    dup = sub["id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise DataError(f"{where}, column 'id': duplicate ids at rows {np.flatnonzero(dup)[:5].tolist()}")
    test_ids = set(run.ds.test["id"].tolist())
    extra = [i for i in sub["id"].tolist() if i not in test_ids]
    missing = test_ids - set(sub["id"].tolist())
    if extra or missing:
        raise DataError(f"{where}, column 'id': {len(missing)} test ids missing, {len(extra)} unknown ids")
    not_leaf = np.flatnonzero([not run.ds.tree.is_leaf(c) for c in sub["predicted_category_id"].tolist()])
    if len(not_leaf):
        raise DataError(f"{where}, column 'predicted_category_id': not a leaf of the tree at rows "
                        f"{not_leaf[:5].tolist()}")


def write_submission(run: Run, model: str | None = None, name: str | None = None) -> tuple[Path, list[str]]:
    sub, used = build_submission(run, model)
    validate_submission(sub, run)
    path = run.paths.submissions / f"{name or used[0]}.parquet"
    write_parquet(sub, path)
    return path, used
