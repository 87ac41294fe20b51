"""What the saved models say about themselves, read from their own files (nothing outside the models
folder): their version (Predictor.version), the training data's fingerprint, the
out-of-fold scores kept beside each model (the rows `./run.sh scores` scores) and the review thresholds."""
from __future__ import annotations

import math

import numpy as np

import prodcat
from prodcat.evaluation.metrics import hf1_of_counts
from prodcat.evaluation.review import load_confidence
from prodcat.outputs import CONFIDENCE_FILE, STACK, TRAIN_IDS
from prodcat.predict import Predictor


def data_fingerprint(predictor: Predictor) -> str:
    """The content hash of the training data the models were made from (as recorded when they were)."""
    if predictor.model == STACK:
        return str(predictor.stacker().meta["data"])
    return str(predictor.bag(predictor.base_names()[0]).meta["data"])


def training_products(predictor: Predictor) -> int | None:
    path = predictor.root / TRAIN_IDS
    if not path.is_file():
        return None
    with np.load(path) as z:
        return int(len(z["ids"]))


def oof_scores(predictor: Predictor) -> list[dict]:
    """OOF hF1 and accuracy of each base model and of the stack (also as for products a hidden model says
    nothing about), from the confidences kept beside each model."""
    kept = [(name, predictor.root / name, CONFIDENCE_FILE) for name in predictor.bags]
    if (predictor.root / STACK / CONFIDENCE_FILE).is_file():
        kept.append((STACK, predictor.root / STACK, CONFIDENCE_FILE))
        kept += [(f"{STACK} {kind.label}", predictor.root / STACK, kind.confidence_file)
                 for kind in predictor.kinds[1:]]
    rows = []
    for name, folder, file in kept:
        c = load_confidence(folder, file)
        if c is None:
            continue
        have = ~c["missing"]
        if not have.any():
            continue  # nothing predicted: no score to give
        rows.append({"model": name, "products": int(have.sum()), "oof_hf1": hf1_of_counts(c["hcounts"][have]),
                     "oof_accuracy": float(c["correct"][have].mean())})
    return rows


def review_rule(predictor: Predictor, threshold: float | None, min_precision: float | None) -> dict:
    """How the service flags needs_review by default: a fixed threshold, or per prediction kind the
    threshold that reaches `min_precision` with its expected coverage (a DataError when the models kept no
    OOF confidences to pick it from)."""
    kinds = []
    if threshold is None and min_precision is not None:
        for kind, (t, coverage, precision) in predictor.thresholds_for(min_precision).items():
            kinds.append({"kind": kind, "threshold": t if math.isfinite(t) else None,
                          "expected_coverage": coverage,
                          "oof_precision": precision if math.isfinite(precision) else None})
    return {"threshold": threshold, "min_precision": None if threshold is not None else min_precision,
            "kinds": kinds}


def describe(predictor: Predictor, settings: dict, newer=None) -> dict:
    """The part of GET /v1/info that stays the same while these models answer (`categories`, `leaves`: of
    the tree they answer under - `newer`, the `serve.tree` one, else their own)."""
    tree = predictor.tree if newer is None else newer
    return {"prodcat_version": prodcat.__version__, "model": predictor.model, "use": predictor.use,
            "model_version": predictor.version, "base_models": predictor.base_names(),
            "data_fingerprint": data_fingerprint(predictor), "training_products": training_products(predictor),
            "categories": len(tree) - 1, "leaves": len(tree.leaves), "top_k": predictor.top_k,
            "oof_scores": oof_scores(predictor),
            "review": review_rule(predictor, settings["threshold"], settings["min_precision"])}


def tree_info(models_tree, newer, tree_file) -> dict:
    """Which category tree answers: the `serve.tree` file (null: the models' own), its fingerprint
    (structure: ids and parents; what the review store is keyed by), node and leaf counts, and the models'
    own tree's fingerprint."""
    tree = models_tree if newer is None else newer
    return {"file": None if newer is None else str(tree_file), "fingerprint": tree.fingerprint,
            "nodes": len(tree), "leaves": len(tree.leaves), "models_fingerprint": models_tree.fingerprint}
