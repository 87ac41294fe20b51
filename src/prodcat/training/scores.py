"""OOF scores of every finished model of a dataset: hF1, weighted F1, accuracy."""
from __future__ import annotations

import pandas as pd

from prodcat.evaluation.metrics import score
from prodcat.outputs import STACK, STACKER_FILE
from prodcat.probs import TopK
from prodcat.training.oof import base_models, finished_models, load_oof
from prodcat.training.run import Run


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


# -- comparison: base models, their plain average and the stacker ------------------------------
AVERAGE = "average"


def comparison_predictions(run: Run) -> dict[str, TopK]:
    """OOF TopK of every finished base model, their plain probability average (two or more base models)
    and the stacker (when finished), in that order."""
    from prodcat.probs import average

    names = base_models(run)
    preds = {name: load_oof(run, name) for name in names}
    if len(names) >= 2:
        preds[AVERAGE] = average(list(preds.values()), k=run.top_k)
    if STACK in finished_models(run) and stack_is_fresh(run):
        preds[STACK] = load_oof(run, STACK)
        for path in sorted(run.paths.oof(STACK).glob("oof_without_*.npz")):  # as for products a model
            name = path.stem.removeprefix("oof_without_")                   # says nothing about
            preds[f"{STACK} without {name}"] = TopK.load(path).align(run.ds.train["id"].to_numpy())
    return preds


def stack_is_fresh(run: Run) -> bool:
    """False (with a warning) when the stacker's base models were retrained since it was fitted."""
    import json
    import warnings

    from prodcat.stacking.stacker import stale_inputs

    meta_path = run.paths.models(STACK) / STACKER_FILE
    if not meta_path.exists():
        warnings.warn(f"the stacker's scores are left out: its saved model is missing ({meta_path}); refit it "
                      "with ./run.sh stack")
        return False
    stale = stale_inputs(json.loads(meta_path.read_text()), run.paths.models_root)
    if stale:
        warnings.warn(f"the stacker's scores are left out: it was fitted on other {', '.join(stale)} fold models "
                      "than the saved ones (retrained or removed since); refit it with ./run.sh stack")
    return not stale


def comparison_table(run: Run, preds: dict[str, TopK] | None = None) -> pd.DataFrame:
    """OOF hF1, weighted F1, accuracy of every base model, the plain average and the stacker, and the
    number of folds each was trained with (as stored, whatever the current settings say)."""
    preds = comparison_predictions(run) if preds is None else preds
    rows = [{"model": name} | score_oof(run, oof) | {"folds": stored_folds(run, name)} for name, oof in preds.items()]
    return pd.DataFrame(rows, columns=["model", "hF1", "weighted_F1", "accuracy", "n", "missing", "folds"])


def stored_folds(run: Run, name: str) -> int | None:
    """The fold count a finished model's OOF predictions were made with (the average: its models')."""
    import json

    from prodcat.models.bag import Bag

    names = base_models(run) if name == AVERAGE else [name.split(" without ")[0]]
    ks = {(Bag(m, run.paths.models(m)).meta or {}).get("k") if m != STACK else
          json.loads((run.paths.oof(m) / "complete.json").read_text()).get("k") for m in names}
    return ks.pop() if len(ks) == 1 else None


def top_level_table(run: Run, preds: dict[str, TopK] | None = None) -> pd.DataFrame:
    """OOF hF1 per top-level category (rows, largest first) and model (columns)."""
    from prodcat.evaluation.metrics import hf1_by_top_level

    preds = comparison_predictions(run) if preds is None else preds
    y = run.ds.train["category_id"].to_numpy()
    table = None
    for name, oof in preds.items():
        have = ~oof.missing
        part = hf1_by_top_level(y[have], oof.top1()[have], run.ds.tree)[["top_level", "title", "hF1"]]
        part = part.rename(columns={"hF1": name})
        table = part if table is None else table.merge(part, on=["top_level", "title"], how="outer")
    if table is None:
        return pd.DataFrame(columns=["top_level", "title", "n"])
    top = pd.Series([run.ds.tree.top_level(c) for c in y.tolist()]).value_counts()
    table.insert(2, "n", table["top_level"].map(top).fillna(0).astype(int))
    return table.sort_values("n", ascending=False, ignore_index=True)
