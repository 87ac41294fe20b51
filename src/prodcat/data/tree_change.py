"""A changed category tree: what changed between two versions (`./run.sh tree diff OLD NEW`) and what a
prediction made under the old tree means under the new one (`predict --tree NEW`).

Nodes are matched by id (as Shopify's taxonomy versions are): a node only in NEW is added, only in OLD
removed; in both, another parent is a move and another title a rename. A leaf the models predict that NEW
removed, or that NEW gave children (no longer a leaf), cannot be an answer there: such a prediction is
flagged for review and named, never auto-accepted; a moved leaf keeps its id and shows its new path. A
mapping file (old id -> new id, Shopify's version-to-version mappings) relabels the training products of
leaves that were merged, split or replaced (`relabel` setting: read at the next `all`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.data.tree import CategoryTree
from prodcat.errors import fail
from prodcat.probs import NO_LABEL

MAP_COLUMNS = ("old_id", "new_id")

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


def read_tree_map(path: Path, tree: CategoryTree) -> dict[int, int]:
    """{old id: new id} of a mapping CSV (columns old_id,new_id; one row per old id); every new id must be a
    leaf of `tree` (the dataset's current tree)."""
    if not path.is_file():
        fail(path, None, "file not found (the setting relabel: a CSV old_id,new_id relative to the data folder; "
                         "null: none)")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
        fail(path, None, f"cannot be read as CSV: {exc}")
    for col in MAP_COLUMNS:
        if col not in frame.columns:
            fail(path, col, f"missing column (a mapping has {', '.join(MAP_COLUMNS)}; found: "
                            f"{', '.join(map(str, frame.columns))})")
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | (values.fillna(0) % 1 != 0).to_numpy())
        if len(bad):
            fail(path, col, "not an integer category id", bad)
    old, new = frame["old_id"].to_numpy(np.int64), frame["new_id"].to_numpy(np.int64)
    twice = np.flatnonzero(pd.Series(old).duplicated(keep=False).to_numpy())
    if len(twice):
        fail(path, "old_id", "an old id mapped more than once (one new leaf each)", twice)
    not_leaf = np.flatnonzero([leaf_problem(int(n), tree) is not None for n in new])
    if len(not_leaf):
        fail(path, "new_id", f"not a leaf of categories_tree.csv: {sorted(set(new[not_leaf].tolist()))[:5]}",
             not_leaf)
    return dict(zip(old.tolist(), new.tolist()))


def relabel(frame: pd.DataFrame, mapping: dict[int, int]) -> tuple[pd.DataFrame, np.ndarray]:
    """(the labelled products with their category_id mapped, which rows it changed)."""
    labels = frame["category_id"].to_numpy(np.int64)
    if not mapping:
        return frame, np.zeros(len(labels), bool)
    mapped = pd.Series(labels).map(mapping).fillna(pd.Series(labels)).to_numpy(np.int64)
    moved = mapped != labels
    return (frame.assign(category_id=mapped) if moved.any() else frame), moved
