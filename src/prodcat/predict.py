"""Predict any file of products with the saved models: each base model's bag (its full child trained on
every product, or the average of its fold children: `use`), then the stacker's fold rankers, averaged - the
path the test set takes, for tomorrow's products too.

    Predictor.load("models/<dataset>").predict(frame)           # Python
    ./run.sh predict --input new.parquet --out pred.parquet     # command line

The output has, per product, the decided leaf, its calibrated probability (`confidence`), the category's
title path, the top-N alternatives and `needs_review` (confidence under the review threshold). The
threshold is set directly or picked for a target precision from the model's out-of-fold confidences. Leaves
with no or few training products join the alternatives by their names (prodcat.models.zero_shot), with
probability 0; `zero_shot_score` is the best such leaf's score.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.data.tree import CategoryTree
from prodcat.errors import DataError, NotTrainedError, UsageError
from prodcat.evaluation.review import load_confidence, oof_quality, pick_threshold
from prodcat.models.bag import DEFAULT_USE, FULL, USES, Bag, saved_bags
from prodcat.outputs import STACK, STACKER_FILE, TRAIN_IDS, TREE_FILE, confidence_file
from prodcat.probs import NO_LABEL, TopK, average
from prodcat.review_rule import ReviewRule
from prodcat.settings import ZeroShotSettings, check, complete

AVERAGE = "average"


@dataclass(frozen=True)
class PredictionKind:
    """The kind of a prediction, which picks its review threshold: every stacked model took part
    (`without` None), or a hidden model (`stack.hide`) said nothing about the product."""

    without: str | None = None

    @property
    def label(self) -> str:
        """What the output's `prediction_kind` column says."""
        return "all models" if self.without is None else f"without {self.without}"

    @property
    def confidence_file(self) -> str:
        """The OOF confidences of this kind, beside the model."""
        return confidence_file(self.without)


ALL = PredictionKind().label  # the kind of a prediction every stacked model took part in
PARALLEL_MODELS_MIN_ROWS = 1_000  # smaller frames (a service's requests) predict one model after another


def check_models_folder(root: str | Path) -> Path:
    """`root` if it holds saved models (their category tree), else a NotTrainedError saying what to do."""
    root = Path(root)
    if not (root / TREE_FILE).is_file():
        raise NotTrainedError(f"{root.resolve()}: no saved models here (train them first: ./run.sh all)")
    return root


class Predictor:
    """Saved models of one dataset (`models/<dataset>/`) that predict any frame of products. `use`: each
    base model's full child (trained on every product) or the average of its fold children."""

    def __init__(self, root: Path, tree: CategoryTree, model: str, bags: dict[str, Bag], use: str = DEFAULT_USE,
                 zero_shot: dict | None = None):
        self.root, self.tree, self.model, self.use = Path(root), tree, model, use
        self.bags = bags  # {base model: its finished bag} saved under root
        self.zero_shot_params = complete(ZeroShotSettings, check(ZeroShotSettings, zero_shot or {}, "Predictor",
                                                                 "zero_shot"))
        self._zero_shot: tuple | None = None  # (the tree, its scorer): built once per tree
        self._stacker = None
        self._thresholds: dict[float, dict] = {}
        self._remembering = threading.Lock()
        self.memory_version = None  # the state of the decisions the models remember (`remember`)

    @classmethod
    def load(cls, root: str | Path, model: str | None = None, preload: bool = True,
             use: str = DEFAULT_USE, zero_shot: dict | None = None) -> "Predictor":
        """Models under `root`; `model`: stack (the default when saved), average, or a base model (the
        default without a stacker: the base model with the best OOF hF1). `use`: full or folds (see
        prodcat.models.bag). `preload`: load every model now (else at the first prediction). `zero_shot`:
        settings over prodcat.settings.ZeroShotSettings."""
        root = Path(root)
        if use not in USES:
            raise UsageError(f"use must be one of {', '.join(USES)} (got {use!r})")
        tree_file = check_models_folder(root) / TREE_FILE
        with warnings.catch_warnings():  # the tree's notes were shown when the models were trained
            warnings.simplefilter("ignore")
            tree = CategoryTree.from_csv(tree_file)
        bags = saved_bags(root)
        has_stack = (root / STACK / STACKER_FILE).exists()
        if model is None:
            if has_stack:
                model = STACK
            elif bags:
                model = max(bags, key=lambda m: np.nan_to_num(oof_quality(root / m), nan=-1))
            else:
                raise NotTrainedError(f"{root.resolve()}: no finished model (every fold saved) to predict with")
        known = list(bags) + ([STACK] if has_stack else []) + ([AVERAGE] if len(bags) > 1 else [])
        if model not in known:
            raise NotTrainedError(f"model '{model}' has no saved fold models under {root.resolve()} "
                                  f"(saved: {', '.join(known) or 'none'})")
        predictor = cls(root, tree, model, bags, use, zero_shot)
        for name in predictor.base_names():  # a missing full child is named now, not at the first product
            if preload:
                predictor.base(name)  # loaded now (checked first): predicting then costs no load time
            else:
                predictor.bag(name).check_use(use)
        return predictor

    @property
    def text_settings(self) -> dict:
        """The shared text settings the models were trained with."""
        if self.model == STACK:
            return self.stacker().meta["text"]
        return self.saved_env(self.base_names()[0])["text"]

    def saved_env(self, name: str) -> dict:
        """The ModelEnv a base model was saved with."""
        return self.bag(name).saved_env()

    def seen_rows(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of the frame whose ids are training ids of these models (none known: none)."""
        from prodcat.data.dataset import seen_rows

        path = self.root / TRAIN_IDS
        if not path.exists():
            return np.zeros(0, np.int64)
        with np.load(path) as z:
            return seen_rows(frame["id"].to_numpy(), z["ids"])

    @cached_property
    def version(self) -> str:
        """12 hex digits naming the models that answer: the chosen model, full or folds, the fingerprint of
        every child used and, for the stack, of the stacker's description (a retrained or refit model is a new
        version)."""
        parts = {"model": self.model, "use": self.use, "children": {
            name: ([self.bag(name).meta[FULL]] if self.use == FULL else self.bag(name).meta["children"])
            for name in self.base_names()}}
        if self.model == STACK:
            parts["stacker"] = hashlib.sha256((self.root / STACK / STACKER_FILE).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    @cached_property
    def top_k(self) -> int:
        """Classes kept per product by the saved models (the most `predict --top` can show)."""
        if self.model == STACK:
            return int(self.stacker().meta["top_k"])
        return min(int(self.saved_env(m)["top_k"]) for m in self.base_names())

    def check_top(self, top: int, name: str = "--top") -> int:
        """`top` if the saved models keep that many classes per product, else a UsageError naming `name`."""
        if top > self.top_k:
            raise UsageError(f"{name} {top}: the saved models keep {self.top_k} classes per product; give "
                             f"{name} {self.top_k} or less (or retrain with a larger top_k)")
        return top

    def base_names(self) -> list[str]:
        if self.model == STACK:
            return self.stacker().names
        if self.model == AVERAGE:
            return list(self.bags)
        return [self.model]

    def bag(self, name: str) -> Bag:
        if name not in self.bags:
            raise NotTrainedError(f"{self.root.resolve() / name}: no finished bag of '{name}' (train it first: "
                                  f"./run.sh train {name})")
        return self.bags[name]

    def base(self, name: str) -> list:
        """The loaded children of a base model that predict new products (its full child, or its folds)."""
        return self.bag(name).children(self.use)

    def remember(self, products: pd.DataFrame | None, version=None) -> None:
        """Products people decided (the training layout: their fields and `category_id`, the chosen leaf)
        join the memory of every loaded base model that keeps one, at once - the next similar product is
        answered with them as with any training neighbour; None forgets them. `version`: what they are the
        state of (`memory_version` says it back), so an unchanged store is not read twice."""
        leaves = None if products is None else products["category_id"].to_numpy(np.int64)
        with self._remembering:
            for name in self.base_names():
                for child in self.base(name):
                    child.remember(products, leaves)
            self.memory_version = version

    def stacker(self):
        if self._stacker is None:
            from prodcat.stacking.stacker import Stacker, check_fresh

            stacker = Stacker.load(self.root / STACK, self.tree)
            check_fresh(stacker.meta, self.root / STACK)  # fitted on the fold models saved beside it
            self._stacker = stacker
        return self._stacker

    # -- prediction ---------------------------------------------------------------------------------------
    def fold_predictions(self, frame: pd.DataFrame, names: list[str] | None = None) -> dict[str, list[TopK]]:
        """{base model: [TopK of each child used]} for the frame (one full child, or every fold child). Two
        models at a time: one that computes on a single core (fastText) leaves the other core to the next."""
        from concurrent.futures import ThreadPoolExecutor

        names = list(names or self.base_names())
        if len(names) < 2 or len(frame) < PARALLEL_MODELS_MIN_ROWS:
            return {m: self.bag(m).child_predictions(frame, self.use) for m in names}
        with ThreadPoolExecutor(2) as pool:
            return dict(zip(names, pool.map(lambda m: self.bag(m).child_predictions(frame, self.use), names)))

    def predict_topk(self, frame: pd.DataFrame) -> TopK:
        """TopK of the chosen model for every product of the frame (stack: column 0 is the decided leaf).
        Products it cannot predict (a base image model without a photo) take the next best model's."""
        return self.predict_kinds(frame)[0]

    @cached_property
    def hidden(self) -> list[str]:
        """The stacked models whose silence makes a product another kind of prediction (`stack.hide`:
        id_neighbours says nothing about a product past every training id); read once, with the models."""
        if self.model != STACK:
            return []
        return [m for m in self.stacker().names if (self.root / STACK / PredictionKind(m).confidence_file).exists()]

    @property
    def kinds(self) -> list[PredictionKind]:
        """Every kind of prediction these models make: all models, then one per hidden model."""
        return [PredictionKind()] + [PredictionKind(m) for m in self.hidden]

    def predict_kinds(self, frame: pd.DataFrame) -> tuple[TopK, np.ndarray]:
        """(TopK, kind of each product's prediction): `ALL`, or `without MODEL` where a hidden model said
        nothing about the product (the review threshold of that kind applies to it). The frame is
        validated first, as a file would be (`validate_products`)."""
        from prodcat.data.dataset import validate_products

        frame = validate_products(frame)
        parts = self.fold_predictions(frame)
        kinds = np.full(len(frame), ALL, dtype=object)
        for m in self.hidden:
            kinds[average(parts[m]).missing & (kinds == ALL)] = PredictionKind(m).label
        if self.model == STACK:
            return self.stacker().predict(parts, frame), kinds
        if self.model == AVERAGE:
            return average([average(p) for p in parts.values()]), kinds
        top = average(parts[self.model])
        if top.missing.any():
            others = sorted(set(self.bags) - {self.model},
                            key=lambda m: -np.nan_to_num(oof_quality(self.root / m), nan=-1))
            for name in others:
                todo = np.flatnonzero(top.missing)
                if not len(todo):
                    break
                fill = average(self.fold_predictions(frame.iloc[todo], [name])[name])
                for arr, src in ((top.labels, fill.labels), (top.scores, fill.scores)):
                    arr[todo, :src.shape[1]] = src[:, :arr.shape[1]]
                top.missing[todo] = fill.missing
        return top, kinds

    def predict(self, frame: pd.DataFrame, top: int = 3, threshold: float | None = None,
                min_precision: float | None = None, tree: CategoryTree | None = None) -> pd.DataFrame:
        """Per product: id, predicted_category_id, confidence, category_path, top-N alternatives with
        their probabilities (the empty leaves' zero-shot suggestions among them: `with_zero_shot`),
        prediction_kind, needs_review (confidence below `threshold`, or below the threshold of the product's
        kind that reaches `min_precision`; neither: nothing flagged). `tree`: a newer tree whose empty leaves
        are suggested (default: the models' own)."""
        ReviewRule(threshold, min_precision)  # checked once, where the rule lives
        topk, kinds = self.predict_kinds(frame)
        if min_precision is not None:
            by_kind = {kind: t for kind, (t, _, _) in self.thresholds_for(min_precision).items()}
            threshold = np.array([by_kind[k] for k in kinds], np.float64)
        return self.with_zero_shot(to_frame(topk, self.tree, top, threshold, kinds), frame, top, tree)

    # -- zero-shot suggestions of the empty leaves -----------------------------------------------------------
    def training_counts(self) -> dict[int, int] | None:
        """{leaf: training products} as the stacker recorded them (None: no stacker, no record)."""
        if self.model != STACK:
            return None
        stacker = self.stacker()
        return dict(zip(stacker.nodes.ids.tolist(), np.rint(stacker.counts).astype(np.int64).tolist()))

    def zero_shot(self, tree: CategoryTree | None = None):
        """The zero-shot scorer of the empty leaves of `tree` (default: the models'), built once per tree;
        None without training counts (no stacker), with `slots` 0 or no empty leaf to name."""
        from prodcat.models.zero_shot import ZeroShot, empty_leaves

        tree = tree or self.tree
        built = self._zero_shot
        if built is None or built[0] is not tree:
            counts, params = self.training_counts(), self.zero_shot_params
            leaves = empty_leaves(tree, counts, params["max_products"]) if counts is not None else []
            scorer = ZeroShot(tree, leaves, params) if len(leaves) and params["slots"] else None
            built = self._zero_shot = (tree, scorer if scorer is not None and len(scorer.leaves) else None)
        return built[1]

    def with_zero_shot(self, table: pd.DataFrame, frame: pd.DataFrame, top: int,
                       tree: CategoryTree | None = None) -> pd.DataFrame:
        """The table with the empty leaves of `tree` merged into its top-N (prodcat.models.zero_shot.merge;
        probability 0) and `zero_shot_score`, the best one's score (NaN: none scored); needs_review also
        where that reaches `novelty_score`. The decided leaf and its confidence stay."""
        from prodcat.models.zero_shot import merge

        scorer, params = self.zero_shot(tree), self.zero_shot_params
        table["zero_shot_score"] = np.full(len(table), np.nan, np.float32)
        if scorer is None or not len(table):
            return table
        zs_labels, zs_scores = scorer.top(frame, int(params["slots"]) + top)
        table["zero_shot_score"] = zs_scores[:, 0]
        cols = [(f"top{j}_category_id", f"top{j}_probability") for j in range(1, top + 1)]
        labels = np.stack([table[c].to_numpy(np.int64) for c, _ in cols], axis=1)
        probs = np.stack([table[p].to_numpy(np.float32) for _, p in cols], axis=1)
        labels, probs = merge(labels, probs, zs_labels, zs_scores, params)
        for j, (c, p) in enumerate(cols):
            table[c], table[p] = labels[:, j], probs[:, j]
        if params["novelty_score"] is not None:
            table["needs_review"] = table["needs_review"].to_numpy() | (zs_scores[:, 0] >= params["novelty_score"])
        return table

    # -- review thresholds ---------------------------------------------------------------------------------
    def oof_confidence(self, kind: PredictionKind = PredictionKind()) -> dict[str, np.ndarray]:
        """The model's OOF confidences and correctness for predictions of this kind."""
        name = kind.confidence_file
        kept = None if self.model == AVERAGE else load_confidence(self.root / self.model, name)
        if kept is None:
            raise DataError(f"no out-of-fold confidences for model '{self.model}' "
                            f"({self.root / self.model / name} missing): set --threshold directly")
        return kept

    def thresholds_for(self, precision: float) -> dict[str, tuple[float, float, float]]:
        """{kind: (threshold, expected coverage, expected precision)} for a target precision of the
        accepted products, each from the OOF confidences of that kind of prediction."""
        if precision not in self._thresholds:  # picked once per precision (the OOF files do not change)
            if len(self._thresholds) >= 64:  # a service's clients may ask for many precisions: bounded
                self._thresholds.clear()
            out = {}
            for kind in self.kinds:
                c = self.oof_confidence(kind)
                out[kind.label] = pick_threshold(c["confidence"], c["correct"], precision)
            self._thresholds[precision] = out
        return self._thresholds[precision]


def to_frame(top: TopK, tree: CategoryTree, n_top: int = 3, threshold=None, kinds=None) -> pd.DataFrame:
    """The output table of `predict` from a TopK; `threshold`: one for all products or one per product."""
    pred = top.labels[:, 0]
    conf = np.where(top.missing, np.nan, top.scores[:, 0].astype(np.float32))
    out = {"id": top.ids, "predicted_category_id": pred, "confidence": conf,
           "category_path": [tree.shown_path(c) for c in pred.tolist()]}
    for j in range(n_top):
        has = j < top.k
        out[f"top{j + 1}_category_id"] = top.labels[:, j] if has else np.full(len(top), NO_LABEL)
        out[f"top{j + 1}_probability"] = top.scores[:, j].astype(np.float32) if has else np.zeros(len(top),
                                                                                                   np.float32)
    out["prediction_kind"] = np.full(len(top), ALL, dtype=object) if kinds is None else kinds
    out["needs_review"] = top.missing | (np.nan_to_num(conf, nan=-1) < threshold if threshold is not None
                                         else np.zeros(len(top), bool))
    return pd.DataFrame(out)


def predict_file(root: Path, input_path: Path, out_path: Path, images: Path | None = None,
                 model: str | None = None, top: int = 3, threshold: float | None = None,
                 min_precision: float | None = None, use: str = DEFAULT_USE, echo=print,
                 tree_file: Path | None = None, zero_shot: dict | None = None) -> pd.DataFrame:
    """`./run.sh predict`: read and validate the input, predict, write the output parquet. `tree_file`: a
    newer category tree the predictions are read under (prodcat.data.tree_change.under_tree); `zero_shot`:
    the review.zero_shot settings."""
    from prodcat.data.dataset import ImageFolder, read_input, with_photos
    from prodcat.data.text import product_texts, report_empty_products
    from prodcat.storage import write_parquet

    start = time.time()
    newer = None if tree_file is None else CategoryTree.from_csv(tree_file)  # a bad tree stops before any work
    predictor = Predictor.load(root, model, preload=False, use=use, zero_shot=zero_shot)
    predictor.check_top(top)
    if min_precision is not None:
        predictor.thresholds_for(min_precision)  # fails now, not after the models have loaded
    frame = read_input(input_path)
    if images is not None and not images.is_dir():
        raise DataError(f"{images.resolve()}: --images folder not found")
    images = images if images is not None else input_path.parent / "images"  # the task's layout
    frame = with_photos(frame, ImageFolder(images), None)
    # the reports go beside the output: two inputs of the same name never share one, nothing lands elsewhere
    report = Path(out_path).parent / Path(out_path).stem
    report_empty_products(frame, product_texts(frame, predictor.text_settings),
                          report.with_name(f"{report.name}.empty_products.csv"), "products to predict", echo)
    seen = predictor.seen_rows(frame)
    if len(seen):
        by_id = [m for m in predictor.base_names() if any(c.uses_ids for c in predictor.base(m))]
        examples = frame["id"].iloc[seen[:3]].tolist()
        echo(f"warning: {len(seen)} products to predict have training ids (e.g. {examples}): "
             "the models were trained on them, so their predictions are optimistic"
             + (f" ({', '.join(by_id)} reads their own label)" if by_id else "")
             + "; give them new ids to predict them as new products")
    if any(m.uses_photos for name in predictor.base_names() for m in predictor.base(name)):
        from prodcat.models.nn.vision import report_skipped

        echo("[predict] " + report_skipped(frame, report.with_name(f"{report.name}.skipped_photos.csv")))
    echo(f"[predict] {len(frame)} products from {input_path} with '{predictor.model}' ({use} models) "
         f"(loaded in {time.time() - start:.1f}s)")
    table = predictor.predict(frame, top, threshold, min_precision, newer)
    if newer is not None:
        from prodcat.data.tree_change import under_tree

        table = under_tree(table, newer)
        named = table["tree_problem"].notna()
        echo(f"[predict] under {tree_file}: {int(named.sum())} products predicted into a category that is not a "
             "leaf of it (removed, or with categories under it now): flagged for review, named in tree_problem")
    if min_precision is not None:
        for kind, (t, coverage, prec) in predictor.thresholds_for(min_precision).items():
            n = int((table["prediction_kind"] == kind).sum())
            echo(f"[predict] {n} products predicted with {kind}: threshold {t:.4f} for precision >= "
                 f"{min_precision} (expected coverage {coverage:.1%}, OOF precision {prec:.4f})")
    write_parquet(table, out_path)
    flagged = int(table["needs_review"].sum())
    echo(f"[predict] {len(table)} products -> {out_path}; {flagged} need review "
         f"({time.time() - start:.1f}s)")
    return table
