"""The category tree: parents, children, leaves, ancestors, depth and title paths."""
from __future__ import annotations

import hashlib
import warnings
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.errors import fail

TREE_COLUMNS = ("id", "title", "parent_id")


class CategoryTree:
    """A rooted category tree.

    The root is excluded from every ancestor set (it is shared by all products). Rows whose parent is
    0 other than the root, and orphans whose parent id is not in the file, are attached under the root
    as top-level categories; a single warning lists them.
    """

    def __init__(self, parent: dict[int, int], titles: dict[int, str], root: int):
        self.parent = parent
        self.titles = titles
        self.root = root
        self.children: dict[int, list[int]] = {n: [] for n in parent}
        for node, par in parent.items():
            if node != root:
                self.children[par].append(node)
        self.leaves = frozenset(n for n, ch in self.children.items() if not ch and n != root)
        self._ancestors = lru_cache(maxsize=None)(self._compute_ancestors)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | Path) -> "CategoryTree":
        path = Path(path)
        if not path.exists():
            fail(path, None, "file not found (a dataset needs categories_tree.csv with id,title,parent_id)")
        try:
            df = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
            fail(path, None, f"cannot be read as CSV: {exc}")
        return cls.from_frame(df, source=path)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str | Path = "categories_tree.csv") -> "CategoryTree":
        for col in TREE_COLUMNS:
            if col not in df.columns:
                fail(source, col, f"missing column (found: {', '.join(map(str, df.columns))})")
        if len(df) == 0:
            fail(source, None, "the category tree is empty")
        for col in ("id", "parent_id"):
            values = pd.to_numeric(df[col], errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy() | (values.to_numpy() % 1 != 0))
            if len(bad):
                fail(source, col, "must hold whole numbers", bad)
        ids = df["id"].astype("int64").to_numpy()
        parents = df["parent_id"].astype("int64").to_numpy()
        dup = np.flatnonzero(pd.Series(ids).duplicated(keep=False).to_numpy())
        if len(dup):
            fail(source, "id", f"duplicate ids {sorted(set(ids[dup].tolist()))[:5]}", dup)
        titles = {int(i): ("" if pd.isna(t) else str(t)) for i, t in zip(ids, df["title"])}
        parent = {int(i): int(p) for i, p in zip(ids, parents)}

        roots = [i for i, p in parent.items() if p == 0]
        orphans = [i for i, p in parent.items() if p != 0 and p not in parent]
        self_loops = [int(r) for r, (i, p) in enumerate(parent.items()) if i == p]
        if self_loops:
            fail(source, "parent_id", "a category is its own parent (a cycle)", self_loops)
        if not roots:
            cyc = _find_cycle(parent)
            if cyc:
                fail(source, "parent_id", f"the tree has a cycle {' -> '.join(map(str, cyc))} and no root",
                     _rows_of(ids, cyc))
            fail(source, "parent_id", "no root: no row has parent_id 0")
        # the root is the parent-0 node with the largest subtree; other roots and orphans hang below it
        sizes = _subtree_sizes(parent)
        root = max(roots, key=lambda r: (sizes.get(r, 0), -r))
        reattached = [r for r in roots if r != root] + orphans
        for node in reattached:
            parent[node] = root
        cyc = _find_cycle(parent)
        if cyc:
            fail(source, "parent_id", f"the tree has a cycle {' -> '.join(map(str, cyc))}", _rows_of(ids, cyc))
        if reattached:
            warnings.warn(
                f"{source}: {len(roots) - 1} extra parent-0 row(s) and {len(orphans)} orphan(s) whose parent "
                f"is not in the file are attached under the root {root} as top-level categories "
                f"(ids {', '.join(map(str, reattached[:10]))}{' ...' if len(reattached) > 10 else ''})",
                stacklevel=2,
            )
        return cls(parent, titles, root)

    # -- queries --------------------------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """Hash of the tree's structure (every id and its parent): decisions and queued products belong to the
        tree they were made under (prodcat.review.store); a renamed title keeps it, a moved node does not."""
        pairs = np.array(sorted(self.parent.items()), dtype=np.int64)
        return hashlib.sha1(pairs.tobytes()).hexdigest()[:12]

    def __contains__(self, node: int) -> bool:
        return node in self.parent

    def __len__(self) -> int:
        return len(self.parent)

    def _compute_ancestors(self, node: int) -> frozenset[int]:
        if node == self.root:
            return frozenset()
        return self._ancestors(self.parent[node]) | {node}

    def ancestors(self, node: int) -> frozenset[int]:
        """The node and all its ancestors, root excluded."""
        return self._ancestors(int(node))

    def path(self, node: int) -> list[int]:
        """Ids from the top-level category down to the node (root excluded)."""
        out = []
        node = int(node)
        while node != self.root:
            out.append(node)
            node = self.parent[node]
        return out[::-1]

    def depth(self, node: int) -> int:
        """1 for a top-level category, 0 for the root."""
        return len(self.ancestors(node))

    def top_level(self, node: int) -> int:
        path = self.path(node)
        return path[0] if path else self.root

    def ancestor_at(self, node: int, up: int) -> int:
        """The ancestor `up` levels above the node (the top-level category if the path is shorter)."""
        path = self.path(node)
        return path[max(len(path) - 1 - up, 0)] if path else self.root

    def title_path(self, node: int, sep: str = " > ") -> str:
        return sep.join(self.titles[n] for n in self.path(node))

    def shown_path(self, node: int) -> str:
        """The title path of a category to show, "" for one not in this tree (no prediction; a category of
        an older tree kept in a review queue)."""
        return self.title_path(int(node)) if node in self else ""

    def is_leaf(self, node: int) -> bool:
        return int(node) in self.leaves


def _subtree_sizes(parent: dict[int, int]) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for node in parent:
        seen = set()
        cur = node
        while cur in parent and cur not in seen:
            seen.add(cur)
            sizes[cur] = sizes.get(cur, 0) + 1
            cur = parent[cur]
    return sizes


def _find_cycle(parent: dict[int, int]) -> list[int] | None:
    state: dict[int, int] = {}  # 1 = on the current walk, 2 = known to reach a root
    for start in parent:
        walk = []
        cur = start
        while cur in parent and state.get(cur) is None:
            state[cur] = 1
            walk.append(cur)
            cur = parent[cur]
        if cur in parent and state.get(cur) == 1:
            return walk[walk.index(cur):] + [cur]
        for n in walk:
            state[n] = 2
    return None


def _rows_of(ids: np.ndarray, nodes: list[int]) -> list[int]:
    wanted = set(nodes)
    return [i for i, v in enumerate(ids.tolist()) if v in wanted]
