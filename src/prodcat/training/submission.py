"""The saved models' prediction of test.parquet as a validated submission parquet (id, predicted_category_id)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.errors import DataError
from prodcat.models.bag import DEFAULT_USE
from prodcat.storage import write_parquet
from prodcat.training.run import Run


def build_submission(run: Run, model: str | None = None, use: str = DEFAULT_USE) -> tuple[pd.DataFrame, str]:
    """The saved models' prediction of the dataset's test.parquet (default model: the stacker when saved,
    else the best base model; `use`: the full or the fold children); products the model cannot predict
    take the next best model's prediction."""
    from prodcat.predict import Predictor

    predictor = Predictor.load(run.paths.models_root, model, use=use)
    top = predictor.predict_topk(run.ds.test_with_photos())
    return pd.DataFrame({"id": top.ids, "predicted_category_id": top.top1()}), predictor.model


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


def submission_path(run: Run, name: str) -> Path:
    """submissions/<dataset>/<name>.parquet; `name` is a bare file name (a trailing .parquet is allowed)."""
    stem = name[:-len(".parquet")] if name.endswith(".parquet") else name
    if not stem or stem in (".", "..") or any(c in stem for c in "/\\\0"):
        raise DataError(f"--name {name!r}: give a bare file name (no folders), e.g. --name my_try")
    return run.paths.submissions / f"{stem}.parquet"


def write_submission(run: Run, model: str | None = None, name: str | None = None,
                     use: str = DEFAULT_USE) -> tuple[Path, str]:
    sub, used = build_submission(run, model, use)
    validate_submission(sub, run)
    path = submission_path(run, name or used)
    write_parquet(sub, path)
    return path, used
