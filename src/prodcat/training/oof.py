"""A run's stored out-of-fold predictions: which models are finished for its training rows, and their OOF."""
from __future__ import annotations

import json

from prodcat.outputs import STACK


def load_oof(run, name: str):
    """The stored OOF TopK of a model, in the training rows' order."""
    from prodcat.probs import TopK

    return TopK.load(run.paths.oof(name) / "oof.npz").align(run.ds.train["id"].to_numpy())


def finished_models(run) -> list[str]:
    """Models whose OOF probabilities are complete for this dataset's training rows: the finished bags
    (prodcat.models.bag, in registry order), then the stacker."""
    from prodcat.models.bag import saved_bags

    names = [n for n, bag in saved_bags(run.paths.models_root).items()
             if bag.finished({"data": run.fit_fingerprint(n)}) and (run.paths.oof(n) / "oof.npz").exists()]
    meta = run.paths.oof(STACK) / "complete.json"
    if meta.exists() and json.loads(meta.read_text()).get("data") == run.ds.fingerprint:
        names.append(STACK)
    return names


def base_models(run) -> list[str]:
    """Finished base models (the stacker's own output is not a base model)."""
    return [m for m in finished_models(run) if m != STACK]
