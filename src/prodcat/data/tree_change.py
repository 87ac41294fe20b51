"""A changed category tree: what changed between two versions (`./run.sh tree diff OLD NEW`) and what a
prediction made under the old tree means under the new one (`predict --tree NEW`).

Nodes are matched by id (as Shopify's taxonomy versions are): a node only in NEW is added, only in OLD
removed; in both, another parent is a move and another title a rename. A leaf the models predict that NEW
removed, or that NEW gave children (no longer a leaf), cannot be an answer there: such a prediction is
flagged for review and named, never auto-accepted; a moved leaf keeps its id and shows its new path."""
from __future__ import annotations

import numpy as np
import pandas as pd

from prodcat.data.tree import CategoryTree
from prodcat.probs import NO_LABEL

ADDED, REMOVED, MOVED, RENAMED = "added", "removed", "moved", "renamed"


def tree_diff(old: CategoryTree, new: CategoryTree, labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per changed node: id, change (added | removed | moved | renamed; a node both moved and
    renamed has two rows), its old and new title path, and how many training products (`labels`: their
    leaves) sit at or under it in the old tree."""
    under = _products_under(old, labels) if labels is not None else {}
    rows = []
    for node in sorted(set(new.parent) - set(old.parent)):
        rows.append((node, ADDED, "", new.title_path(node)))
    for node in sorted(set(old.parent) - set(new.parent)):
        rows.append((node, REMOVED, old.title_path(node), ""))
    for node in sorted(set(old.parent) & set(new.parent) - {old.root, new.root}):
        if old.parent[node] != new.parent[node]:
            rows.append((node, MOVED, old.title_path(node), new.title_path(node)))
        if old.titles.get(node, "") != new.titles.get(node, ""):
            rows.append((node, RENAMED, old.title_path(node), new.title_path(node)))
    out = pd.DataFrame(rows, columns=["id", "change", "old_path", "new_path"])
    out["training_products"] = [int(under.get(node, 0)) for node in out["id"]]
    return out


def _products_under(tree: CategoryTree, labels: np.ndarray) -> dict[int, int]:
    """{node: training products at or under it}."""
    counts: dict[int, int] = {}
    leaves, n = np.unique(np.asarray(labels, np.int64), return_counts=True)
    for leaf, count in zip(leaves.tolist(), n.tolist()):
        if leaf in tree:
            for node in {leaf} | tree.ancestors(leaf):  # (the ancestors hold the leaf itself)
                counts[node] = counts.get(node, 0) + count
    return counts


def leaf_problem(node: int, tree: CategoryTree) -> str | None:
    """Why `node` cannot be an answer under `tree` (None: it is one of its leaves)."""
    if node not in tree:
        return "removed from the tree"
    if not tree.is_leaf(node):
        return "no longer a leaf (it has categories under it now)"
    return None


def under_tree(table: pd.DataFrame, tree: CategoryTree) -> pd.DataFrame:
    """A predictions table (prodcat.predict.to_frame) made under the models' tree, read under `tree`: paths
    from `tree`; a prediction into a node that is not one of its leaves is flagged (`needs_review`) and
    named (`tree_problem`); alternatives keep their ids (a removed one shows no path)."""
    table = table.copy()
    leaves = table["predicted_category_id"].tolist()
    problems = [None if leaf == NO_LABEL else leaf_problem(int(leaf), tree) for leaf in leaves]
    table["category_path"] = [tree.shown_path(leaf) for leaf in leaves]
    table["tree_problem"] = pd.Series(problems, dtype=object)
    table["needs_review"] = table["needs_review"].to_numpy() | np.array([p is not None for p in problems], bool)
    return table
