"""Fitting the stacker (prodcat.stacking.stacker is the model): cross-validated over the base models' OOF rows
(honest OOF), saved under models/<dataset>/stack/ with its OOF under oof/<dataset>/stack/."""
from __future__ import annotations

import shutil
import time
from typing import NamedTuple

import numpy as np
import pandas as pd

from prodcat.evaluation.metrics import hierarchical_f1
from prodcat.outputs import STACK, STACKER_FILE
from prodcat.probs import TopK
from prodcat.stacking.decoding import _to_topk, decode, fit_temperature, group_softmax
from prodcat.stacking.features import NodeIndex, candidate_pairs, monotone_constraints, pair_features, product_features
from prodcat.stacking.stacker import DEFAULTS, FORMAT, MeanProbability, Stacker, input_fingerprints, ranker_name, score
from prodcat.storage import write_json
from prodcat.training.oof import base_models
from prodcat.training.results import commit
from prodcat.training.run import Run


def stack_params(run: Run) -> dict:
    return DEFAULTS | dict(run.cfg["stack"])


def inputs_key(run: Run, names: list[str], p: dict, inputs: dict) -> str:
    """Hash of the stacker's settings and of its inputs (`input_fingerprints` of the base models' fold
    models, whose held-out predictions are its training rows): an unchanged stack is reused."""
    from prodcat.settings import config_hash

    return config_hash({"format": FORMAT, "params": p, "models": names, "inputs": inputs,
                        "data": run.ds.fingerprint, "folds": run.k, "seed": run.seed, "top_k": run.top_k,
                        "text": run.cfg["text"]})


def run_stack(run: Run, models: list[str] | None = None, echo=print, force: bool = False) -> dict:
    """Fit the stacker on the base models' OOF rows (cross-validated: honest OOF), save it under
    models/<dataset>/stack/ and its OOF predictions under oof/<dataset>/stack/ (one process at a time).

    Reused (not refitted) when the settings and the base models' OOF files are unchanged, unless `force`."""
    from prodcat.storage import locked

    with locked(run.paths, STACK, echo):
        return _run_stack(run, models, echo, force)


def _run_stack(run: Run, models: list[str] | None, echo, force: bool) -> dict:
    import json

    p = stack_params(run)
    names = list(models or p["models"] or base_models(run))
    missing = [m for m in names if m not in base_models(run)]
    if missing or not names:
        from prodcat.errors import DataError

        raise DataError(f"stack: no finished OOF probabilities for {', '.join(missing) or 'any model'} "
                        f"(train them first: ./run.sh train MODEL)")
    inputs = input_fingerprints(run.paths.models_root, names)  # before fitting: what the OOF rows came from
    key = inputs_key(run, names, p, inputs)
    out, folder = run.paths.oof(STACK), run.paths.models(STACK)
    if not force and (out / "complete.json").exists() and (folder / STACKER_FILE).exists():
        if json.loads((out / "complete.json").read_text()).get("key") == key:
            info = json.loads((out / "stack.json").read_text())
            echo(f"[stack] {', '.join(names)}: unchanged inputs, reused (OOF hF1 "
                 f"{info['oof_hF1'][info['decoding']]:.4f}; --force to recompute)")
            return info
    (out / "complete.json").unlink(missing_ok=True)  # half-written outputs are never complete
    stacker, oof_top, without, info = fit_stacker(run, names, p, echo)
    if folder.exists():
        shutil.rmtree(folder)  # no file of an earlier stacker (a ranker of another fold count) lingers
    folder.mkdir(parents=True)
    from prodcat.evaluation.review import save_confidence
    from prodcat.outputs import confidence_file

    for old in out.glob("oof_without_*.npz"):
        old.unlink()
    oof_top.save(out / "oof.npz")
    save_confidence(run, oof_top, folder)
    for m, top in without.items():  # what new products that model says nothing about are judged by
        top.save(out / f"oof_without_{m}.npz")
        save_confidence(run, top, folder, confidence_file(without=m))
    stacker.meta["inputs"] = inputs
    stacker.save(folder)
    write_json(info, out / "stack.json")
    write_json({"data": run.ds.fingerprint, "k": run.k, "models": STACK, "inputs": names, "key": key},
               out / "complete.json")
    return info


def fit_stacker(run: Run, names: list[str], p: dict, echo=print):
    """Cross-validate the ranker over the OOF rows; returns the Stacker, its OOF TopK, its OOF TopK without
    each `stack.hide` model ({model: TopK}) and a summary."""
    from prodcat.training.oof import load_oof

    start = time.time()
    nodes = NodeIndex(run.ds.tree)
    oof = {m: load_oof(run, m) for m in names}
    y = nodes.index(run.ds.train["category_id"].to_numpy())
    folds = run.folds["fold"].to_numpy()
    n_train = len(y)
    n_folds = int(p["folds"] or run.k)
    # the ranker's folds: the run's product folds, or (another count) a seeded split of the products;
    # either is honest, as every product's features are out-of-fold predictions of the base models
    stack_folds = folds if n_folds == run.k else np.random.default_rng(run.seed).permutation(n_train) % n_folds
    counts, freq_oof = _class_counts(y, folds, run.k, len(nodes.ids))
    prod = product_features(run.ds.train, run.env.text) if p["product_features"] else None
    priors = fit_priors(run, p, nodes, y, folds, echo) if p["priors"] else None
    codes = priors.codes(run.ds.train) if priors is not None else None
    rows, cls, x = _pairs(oof, nodes, p, freq_oof, folds, prod, priors, codes)
    excluded = p["exclude_features"] or []
    x = x.drop(columns=[c for c in x.columns if any(c == e or c.endswith("_" + e) for e in excluded)])
    is_true = cls == y[rows]
    has_truth = np.zeros(n_train, bool)
    has_truth[rows[is_true]] = True
    recall = float(has_truth.mean())
    echo(f"[stack] {', '.join(names)}: {len(rows) / n_train:.1f} candidates per product, truth among them "
         f"for {recall:.2%}, {x.shape[1]} features ({time.time() - start:.0f}s)")
    hidden = {m: (*_pairs({n: (TopK.empty(v.ids, v.k) if n == m else v) for n, v in oof.items()}, nodes, p,
                          freq_oof, folds, prod, priors, codes, x.columns), share)
              for m, share in _hidden_models(p, names).items()}  # every product as if m had said nothing
    sets = _fit_rankers(run, p, Queries(x, rows, is_true), has_truth, stack_folds, n_folds, echo, start, hidden, y)
    score_oof, importance = sets[None][2:]
    score_hidden = {m: sets[m][2] for m in hidden}
    _route(score_oof, rows, {m: (hidden[m][0], score_hidden[m], oof[m].missing) for m in hidden})
    temp, f_level, proba_oof, results, decided, without, without_top = _decide_oof(
        run, p, nodes, rows, cls, score_oof, is_true, hidden, score_hidden, echo)
    method = p["decoding"]
    ids = run.ds.train["id"].to_numpy()
    oof_top = _to_topk(ids, rows, cls, proba_oof, decided[method], nodes, run.top_k)
    meta = {"format": FORMAT, "models": names, "params": p, "k": run.k, "n_rankers": n_folds, "temperature": temp,
            "fallback": [ranker_name(m, f) for m, (fold, whole, _, _) in sets.items()
                         for f, b in [*enumerate(fold), ("full", whole)] if isinstance(b, MeanProbability)],
            "without": list(hidden), "f_level": f_level, "decoding": method, "columns": list(x.columns),
            "top_k": run.top_k, "text": run.env.text, "data": run.ds.fingerprint,
            "commit": commit()}  # the code that fitted it: the results pages name it
    stacker = Stacker(run.ds.tree, meta, {m: found[:2] for m, found in sets.items()}, freq_oof, counts, priors)
    info = {"data": run.ds.fingerprint, "k": run.k, "models": names, "params": p, "temperature": temp,
            "candidates_per_product": round(len(rows) / n_train, 2), "candidate_recall": recall,
            "oof_hF1": results, "oof_hF1_without": without, "decoding": method,
            "seconds": round(time.time() - start, 1),
            "feature_importance": dict(sorted(zip(x.columns, importance.round(1).tolist()),
                                              key=lambda kv: -kv[1]))}
    echo(f"[stack] OOF hF1 argmax {results['argmax']:.4f}, expected-hF1 decoding {results['expected_hf1']:.4f} "
         f"-> {method}; temperature {temp:.2f} ({time.time() - start:.0f}s)")
    return stacker, oof_top, without_top, info


def _class_counts(y: np.ndarray, folds: np.ndarray, k: int, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Training counts of each class: over every product, and as each fold's base models saw them (fold f's
    rows excluded; (k, nodes))."""
    counts = np.bincount(y, minlength=n_nodes).astype(np.float32)
    per_fold = np.stack([np.bincount(y[folds == f], minlength=n_nodes) for f in range(k)])
    return counts, (counts[None, :] - per_fold).astype(np.float32)


def _decide_oof(run: Run, p: dict, nodes, rows, cls, score_oof, is_true, hidden: dict, score_hidden: dict, echo):
    """The softmax temperature, the hF1 level F, the OOF probabilities, the OOF hF1 and decided leaves of both
    decodings, and the OOF hF1 and TopK without each hidden model (as for products it has nothing to say
    about)."""
    n_train = len(run.ds.train)
    temp = fit_temperature(rows, score_oof, is_true)
    proba_oof = group_softmax(rows, score_oof, temp)
    # decoding: measure both on the OOF rows, keep the configured one. Expected-hF1 decoding needs the
    # hF1 level F reached; the argmax decoding's OOF hF1 is used (one scalar, for the OOF and new rows)
    y_ids = run.ds.train["category_id"].to_numpy()
    argmax = decode(rows, cls, proba_oof, nodes, n_train, "argmax")
    f_level = hierarchical_f1(y_ids, nodes.category(argmax), run.ds.tree)
    results, decided = {}, {}
    for method in ("argmax", "expected_hf1"):
        decided[method] = decode(rows, cls, proba_oof, nodes, n_train, method, f_level)
        results[method] = hierarchical_f1(y_ids, nodes.category(decided[method]), run.ds.tree)
    without, without_top = {}, {}  # OOF where a hidden model says nothing (id_neighbours on new products)
    ids = run.ds.train["id"].to_numpy()
    for m, (r, c, _, _) in hidden.items():
        proba_h = group_softmax(r, score_hidden[m], temp)
        chosen = decode(r, c, proba_h, nodes, n_train, p["decoding"], f_level)
        without[m] = hierarchical_f1(y_ids, nodes.category(chosen), run.ds.tree)
        without_top[m] = _to_topk(ids, r, c, proba_h, chosen, nodes, run.top_k)
        echo(f"[stack] OOF hF1 without {m} (as for products it has nothing to say about): {without[m]:.4f}")
    return temp, f_level, proba_oof, results, decided, without, without_top


def fit_priors(run: Run, p: dict, nodes, y: np.ndarray, folds: np.ndarray, echo=print):
    """The lookup priors of the training products' folds, and of the train-only products in every fold
    (`stack.priors_train_only`)."""
    from prodcat.stacking.priors import LookupPriors

    extra = run.ds.train_only_frame() if run.ds.train_only is not None and p["priors_train_only"] else None
    extra_y = None if extra is None else nodes.index(extra["category_id"].to_numpy())
    priors = LookupPriors.fit(p["priors"], run.ds.train, y, folds, run.k, len(nodes.ids), extra, extra_y)
    if extra is not None:
        echo(f"[stack] lookup priors counted on {len(y)} training and {len(extra)} train-only products")
    return priors


def _pairs(parts: dict[str, TopK], nodes, p, freq_oof, folds, prod, priors, codes, columns=None):
    """(rows, classes, features) of the OOF candidates of every training product (`columns`: those)."""
    rows, cls = candidate_pairs(list(parts.values()), nodes, int(p["candidates"]))
    x = pair_features(parts, nodes, rows, cls, freq_oof, folds, prod)
    if priors is not None:
        x = pd.concat([x, priors.features(codes, rows, cls, folds[rows])], axis=1)
    return rows, cls, (x if columns is None else x.reindex(columns=columns, fill_value=0.0))


def _hidden_models(p, names: list[str]) -> dict[str, float]:
    """The stacked models of `stack.hide` and the share of training products shown without each (a model
    not stacked here, e.g. skipped on this data, has nothing to hide)."""
    return {m: float(share) for m, share in (p["hide"] or {}).items() if m in names and share > 0}


class Queries(NamedTuple):
    """What a set of rankers learns from: the (product, candidate) pairs' features, their product rows
    (sorted) and whether each pair is the product's true leaf."""

    x: pd.DataFrame
    rows: np.ndarray
    is_true: np.ndarray


def _fit_rankers(run, p, main: Queries, has_truth, stack_folds, n_folds, echo, start, hidden=None, y=None):
    """{None: the main set, m: the set for products without m} of ranker sets, each (fold rankers, full
    ranker, held-out scores of its pairs, feature importance). The main set learns from every product's
    candidates; the set of a hidden model m (`stack.hide`) from a sampled `share` of the products shown as if
    m had said nothing, and ranks the products m says nothing about (id_neighbours on tomorrow's products)."""
    params = _ranker_params(p, list(main.x.columns), run.seed)
    rng = np.random.default_rng(run.seed)
    sets = {None: (main, has_truth)}
    for m, (r, c, xh, share) in (hidden or {}).items():
        sets[m] = (Queries(xh, r, c == y[r]), has_truth & (rng.random(len(has_truth)) < share))
    return {m: _fit_set(params, p, q, allowed, stack_folds, n_folds, rng, echo, start,
                        "" if m is None else f" without {m}") for m, (q, allowed) in sets.items()}


def _fit_set(params, p, q: Queries, allowed, stack_folds, n_folds, rng, echo, start, label: str):
    """One LightGBM ranker per fold on the other folds' `allowed` products (their scores of the held-out
    pairs: honest OOF), then the full ranker on every allowed product (AutoGluon's refit_full of a stacker
    level: it alone scores the full base models' predictions)."""
    import lightgbm as lgb

    n_train = len(allowed)
    scores, importance, boosters = np.zeros(len(q.rows)), np.zeros(q.x.shape[1]), []
    pair_fold = stack_folds[q.rows]
    for f in [*range(n_folds), None]:
        products = np.flatnonzero(allowed & ((stack_folds != f) if f is not None else True))
        if len(products) > p["max_train_products"]:
            products = np.sort(rng.choice(products, int(p["max_train_products"]), replace=False))
        sel = np.isin(q.rows, products)
        what = f"{'full (every product)' if f is None else f'fold {f}'}{label}"
        if not sel.any():
            echo(f"warning: [stack] {what}: no product has its true class among the candidates (e.g. every "
                 "class has one product): candidates are ranked by the base models' mean probability")
            booster = MeanProbability()
        else:
            ds = lgb.Dataset(q.x[sel], label=q.is_true[sel].astype(int), group=_group_sizes(q.rows[sel], n_train),
                             free_raw_data=True)
            booster = lgb.train(params, ds, num_boost_round=int(p["num_boost_round"]))
            importance += booster.feature_importance("gain")
            echo(f"[stack] {what}: ranker on {len(products)} products ({time.time() - start:.0f}s)")
        if f is not None:
            held = pair_fold == f
            scores[held] = score(booster, q.x[held])
        boosters.append(booster)
    return boosters[:-1], boosters[-1], scores, importance


def _route(score_oof, rows, hidden: dict) -> None:
    """The OOF scores of the products a hidden model said nothing about from that model's own rankers
    (`hidden`: {model: (its view's pair rows, their scores, its missing products)}); a product two models
    said nothing about goes to the first one's, as in Stacker.scores. Their candidates are the same pairs
    in both views: the model proposed none."""
    routed = np.zeros(len(next(iter(hidden.values()))[2]), bool) if hidden else None
    for rows_h, score_h, missing in hidden.values():
        products = missing & ~routed
        in_main, in_hidden = products[rows], products[rows_h]
        if in_main.sum() == in_hidden.sum():
            score_oof[in_main] = score_h[in_hidden]
            routed |= products


def _ranker_params(p: dict, columns: list[str], seed: int) -> dict:
    """LightGBM's parameters of the rankers, from the stack settings."""
    params = {"objective": p["objective"], "learning_rate": p["learning_rate"], "num_leaves": p["num_leaves"],
              "min_data_in_leaf": p["min_data_in_leaf"], "feature_fraction": p["feature_fraction"],
              "bagging_fraction": p["bagging_fraction"], "bagging_freq": 1, "lambda_l2": p["lambda_l2"],
              "num_threads": p["num_threads"], "seed": seed, "verbose": -1,
              "deterministic": True, "force_row_wise": True}
    if p["monotone"]:  # more probability for the candidate never lowers its score: a strong regulariser
        params |= {"monotone_constraints": monotone_constraints(columns), "monotone_constraints_method": "advanced"}
    if p["objective"] == "lambdarank":
        params |= {"lambdarank_truncation_level": 10, "eval_at": [1]}
    return params


def _group_sizes(rows: np.ndarray, n: int) -> np.ndarray:
    """Pairs per query of sorted pair rows (LightGBM's `group`)."""
    counts = np.bincount(rows, minlength=n)
    return counts[counts > 0]
