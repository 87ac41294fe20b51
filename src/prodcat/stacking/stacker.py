"""LightGBM candidate-ranking stacker over the base models' stored probabilities, and hF1 decoding.

For every product the candidates are the union of each base model's `candidates` best classes. Each
(product, candidate) pair gets features that mean the same for every class - per model: probability and
rank of the candidate, probability mass on the candidate's parent and grandparent subtrees, ratio to the
model's top probability, the model's top probability and entropy, whether it ranks the candidate first,
whether the model is missing for the product (no photo) and its flags; shared: how many models rank the
candidate first, the mean and max probability, the candidate's training frequency and depth, the number of
candidates; optionally lookup priors (prodcat.stacking.priors: how often the candidate goes with the product's first
title words or brand in the other folds' labels). For a sometimes-silent model (`stack.hide`: id_neighbours
says nothing about tomorrow's products) a second set of rankers learns from the products shown as if it had
said nothing, and ranks the products it says nothing about; the OOF hF1 without it is reported. A LightGBM
ranker (lambdarank by default, one query per product, the true leaf relevant) scores the pairs; a softmax per
product with a temperature fitted on the OOF rows turns scores into probabilities.

Honest OOF: the stacker is cross-validated over the OOF rows with the run's product folds (the rows of
fold f are scored by a ranker trained on the other folds). New products (a test file, tomorrow's
products): the ranker of fold f scores the predictions of the base models' fold-f models (single-model
probabilities, like its training rows) and the stacked probabilities are averaged over the folds. The base
models' full children (refit on every product) are scored by one full ranker, fitted on every product's
OOF queries with the same settings (AutoGluon's refit_full of a stacker level): one ranker per product, not k.

Decoding: `argmax` submits the most probable leaf; `expected_hf1` submits the candidate leaf that maximises
the expected (micro) hierarchical F1: by the Dinkelbach argument, maximising 2*I/(P+T) over all products
is maximising sum_i E[|A(l_i) & A(t_i)|] - F/2 * |A(l_i)|, i.e. per product the leaf whose path
maximises sum over its nodes a of (P(subtree a) - F/2), with F the hF1 reached (iterated twice).
Output: models/<dataset>/stack/ (rankers, temperature, counts, priors: `Stacker.load`) and
oof/<dataset>/stack/oof.npz in the base models' format (column 0 = the decided leaf).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from prodcat.outputs import STACKER_FILE
from prodcat.probs import TopK
from prodcat.settings import StackSettings, defaults_of
from prodcat.stacking.decoding import _average_test, _to_topk, decode
from prodcat.stacking.features import NodeIndex, candidate_pairs, pair_features, product_features
from prodcat.storage import write_json

DEFAULTS = defaults_of(StackSettings)  # declared (with their docs) in prodcat.settings
FORMAT = 2  # the saved stacker's layout: ranker sets (main, and one per hidden model), each k folds + full


def input_fingerprints(models_root, names: list[str]) -> dict[str, list[str]]:
    """{base model: its bag's fold-child fingerprints} (prodcat.models.bag: a retrained fold changes its
    fingerprint; a fold without a saved child has an empty one; a bag that is gone has none)."""
    from prodcat.models.bag import Bag

    bags = {m: Bag(m, models_root / m) for m in names}
    return {m: bag.fingerprints() if bag.meta else [] for m, bag in bags.items()}


def stale_inputs(meta: dict, models_root) -> list[str]:
    """The base models whose saved fold models are not the ones this stacker was fitted on."""
    recorded = meta.get("inputs") or {}
    now = input_fingerprints(models_root, meta["models"])
    return [m for m in meta["models"] if recorded.get(m) != now[m]]


def check_fresh(meta: dict, folder) -> None:
    """Refuse a stacker whose base models were retrained (or removed) since it was fitted."""
    from prodcat.errors import NotTrainedError

    stale = stale_inputs(meta, folder.parent)
    if stale:
        raise NotTrainedError(f"{folder}: the stacker was fitted on other {', '.join(stale)} fold models than "
                              "the saved ones (retrained or removed since): refit it with ./run.sh stack "
                              "(./run.sh all does it too)")


class MeanProbability:
    """Stands in for a fold ranker that had nothing to learn from (no product of the other folds has its true
    class among its candidates, e.g. every class a singleton): a candidate's score is the base models' mean
    probability of it."""

    def predict(self, x) -> np.ndarray:
        return x["mean_prob"].to_numpy(np.float64)


class Stacker:
    """The fitted stacker: ranker sets - the main one, and one per `stack.hide` model for the products that
    model says nothing about - each one LightGBM ranker per fold and a full one (every product); the softmax
    temperature, the hF1 level of the decoding, the training class counts per fold and the lookup priors.
    Saved as LightGBM model text files, json, npz and parquet; `predict` stacks the base models' predictions
    of any frame."""

    def __init__(self, tree, meta: dict, sets: dict, freq: np.ndarray, counts: np.ndarray, priors=None):
        self.tree, self.meta, self.sets = tree, meta, sets  # {None | hidden model: (fold rankers, full ranker)}
        self.nodes = NodeIndex(tree)
        self.freq, self.counts, self.priors = freq, counts, priors

    @property
    def names(self) -> list[str]:
        return list(self.meta["models"])

    def product_inputs(self, frame: pd.DataFrame) -> tuple:
        """What the features need of the products themselves: text sizes and prior key codes."""
        prod = product_features(frame, self.meta["text"]) if self.meta["params"]["product_features"] else None
        return prod, (self.priors.codes(frame) if self.priors is not None else None)

    def features(self, parts: dict[str, TopK], inputs: tuple, fold: int):
        """(rows, classes, features) of a frame's candidates, from base predictions made by fold models
        `fold` (-1: the full models' predictions; counts then scaled to a fold's share)."""
        k = self.meta["k"]
        prod, codes = inputs
        r, c = candidate_pairs(list(parts.values()), self.nodes, int(self.meta["params"]["candidates"]))
        counts = self.freq[fold] if fold >= 0 else self.counts * (k - 1) / k
        n = len(next(iter(parts.values())))
        x = pair_features(parts, self.nodes, r, c, counts[None, :], np.zeros(n, np.int64), prod)
        if self.priors is not None:
            x = pd.concat([x, self.priors.features(codes, r, c, np.int64(fold))], axis=1)
        return r, c, x.reindex(columns=self.meta["columns"], fill_value=0.0)  # e.g. a missing flag

    def scores(self, view: dict[str, TopK], r: np.ndarray, x: pd.DataFrame, fold: int) -> np.ndarray:
        """Each pair scored by its product's ranker set: that of the first hidden model that said nothing
        about the product, else the main set; ranker `fold` of the set (-1: its full ranker)."""
        out, done = np.zeros(len(r)), np.zeros(len(r), bool)
        for m in [m for m in self.sets if m is not None and m in view] + [None]:
            mine = ~done & (view[m].missing[r] if m is not None else True)
            fold_rankers, full = self.sets[m]
            out[mine] = score(fold_rankers[fold] if fold >= 0 else full, x[mine])
            done |= mine
        return out

    def predict(self, parts: dict[str, list[TopK]], frame: pd.DataFrame) -> TopK:
        """Stacked TopK of the frame (column 0: the decided leaf). `parts[model][f]`: fold model f's
        predictions; ranker f scores fold f's, the stacked probabilities are averaged over the rankers.
        `parts[model] == [full child's]`: the full rankers score them."""
        from prodcat.probs import average

        n_folds = len(self.sets[None][0])
        # a model fitted once (train_only.once) has one child: the same predictions for every fold's ranker
        per_fold = (all(len(v) in (1, n_folds) for v in parts.values()) and n_folds == self.meta["k"]
                    and any(len(v) == n_folds for v in parts.values()))
        inputs = self.product_inputs(frame)
        views = ([(f, {m: parts[m][f if len(parts[m]) > 1 else 0] for m in self.names}) for f in range(n_folds)]
                 if per_fold else [(-1, {m: average(parts[m]) for m in self.names})])
        scored = []
        for f, view in views:
            r, c, x = self.features(view, inputs, f)
            scored.append((r, c, self.scores(view, r, x, f)))
        rows, cls, proba = _average_test(scored, self.meta["temperature"], len(self.nodes.ids))
        decided = decode(rows, cls, proba, self.nodes, len(frame), self.meta["decoding"], self.meta["f_level"])
        return _to_topk(frame["id"].to_numpy(), rows, cls, proba, decided, self.nodes,
                        int(self.meta["top_k"]))

    def save(self, folder) -> None:
        """Rankers, counts and priors, then stacker.json (last) with the checksums of every file in the
        folder (the OOF confidences saved before it included)."""
        from prodcat.models.base import file_checksums
        from prodcat.storage import atomic_path, write_npz

        (folder / STACKER_FILE).unlink(missing_ok=True)
        for m, (fold_rankers, full) in self.sets.items():
            for f, booster in [*enumerate(fold_rankers), ("full", full)]:
                if isinstance(booster, MeanProbability):
                    continue  # nothing learned: `meta["fallback"]` says so
                with atomic_path(folder / f"{ranker_name(m, f)}.txt") as tmp:
                    booster.save_model(str(tmp))
        write_npz({"freq": self.freq, "counts": self.counts}, folder / "counts.npz")
        if self.priors is not None:
            self.priors.save(folder)
        self.meta["files"] = file_checksums(folder, skip=STACKER_FILE)
        write_json(self.meta, folder / STACKER_FILE)  # last: the folder holds a stacker only with it

    @classmethod
    def load(cls, folder, tree) -> "Stacker":
        import json

        import lightgbm as lgb

        from prodcat.errors import NotTrainedError
        from prodcat.models.base import verify_files

        if not (folder / STACKER_FILE).exists():
            raise NotTrainedError(f"{folder}: no saved stacker here (run ./run.sh stack first)")
        meta = json.loads((folder / STACKER_FILE).read_text())
        if meta.get("format") != FORMAT or "files" not in meta:
            raise NotTrainedError(f"{folder}: a stacker saved by an older prodcat: refit it with ./run.sh stack "
                                  "--force")
        verify_files(folder, meta["files"])

        def ranker(m, f):
            name = ranker_name(m, f)
            if name in meta["fallback"]:
                return MeanProbability()
            return lgb.Booster(model_file=str(folder / f"{name}.txt"))

        sets = {m: ([ranker(m, f) for f in range(meta["n_rankers"])], ranker(m, "full"))
                for m in [None, *meta["without"]]}
        with np.load(folder / "counts.npz") as z:
            freq, counts = z["freq"], z["counts"]
        priors = None
        if meta["params"]["priors"]:
            from prodcat.stacking.priors import LookupPriors

            priors = LookupPriors.load(folder, meta["params"]["priors"], meta["k"], len(NodeIndex(tree).ids))
        return cls(tree, meta, sets, freq, counts, priors)


def ranker_name(model: str | None, fold) -> str:
    """File stem of a ranker: ranker{f} / ranker_full, or ranker_without_{model}_{f|full}."""
    return f"ranker{'' if model is None else f'_without_{model}_'}{fold if fold != 'full' or model else '_full'}"


def score(booster, x: pd.DataFrame) -> np.ndarray:
    """A ranker's scores of the pairs' feature rows (as a float32 array: no pandas conversion per call)."""
    if isinstance(booster, MeanProbability) or not len(x):
        return booster.predict(x) if len(x) else np.zeros(0)
    return booster.predict(np.ascontiguousarray(x.to_numpy(np.float32)))


