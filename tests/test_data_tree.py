import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import TREE

from prodcat.data.tree import CategoryTree
from prodcat.errors import DataError

KE_TREE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kazanexpress" / "categories_tree.csv"


def test_ancestors_depth_leaves_paths():
    tree = CategoryTree.from_frame(TREE)
    assert tree.root == 1
    assert tree.ancestors(23) == {20, 22, 23}
    assert tree.ancestors(1) == frozenset()
    assert tree.depth(23) == 3 and tree.depth(10) == 1
    assert tree.leaves == {11, 12, 21, 23, 24}
    assert tree.title_path(23) == "Pets > Dog food > Dry"
    assert tree.top_level(24) == 20
    assert tree.ancestor_at(23, 1) == 22 and tree.ancestor_at(23, 5) == 20
    assert tree.children[22] == [23, 24]


def test_extra_roots_and_orphans_hang_under_root_with_one_warning():
    df = pd.concat([TREE, pd.DataFrame({"id": [30, 40], "title": ["Extra root", "Orphan"],
                                        "parent_id": [0, 999]})], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = CategoryTree.from_frame(df)
    assert len(caught) == 1 and "30, 40" in str(caught[0].message)
    assert tree.root == 1 and tree.parent[30] == 1 and tree.parent[40] == 1
    assert tree.depth(40) == 1 and tree.is_leaf(40)


@pytest.mark.skipif(not KE_TREE.exists(), reason="shared data not present")
def test_real_kazanexpress_tree():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = CategoryTree.from_csv(KE_TREE)
    assert len(caught) == 1
    assert tree.root == 1 and len(tree) == 3370
    assert tree.parent[2780] == 1 and tree.parent[553] == 1  # orphan and extra parent-0 row
    leaf = next(iter(tree.leaves))
    assert tree.title_path(leaf).count(" > ") == tree.depth(leaf) - 1


@pytest.mark.parametrize("rows, message", [
    ({"id": [1, 2, 3], "title": ["r", "a", "b"], "parent_id": [0, 3, 2]}, "cycle"),
    ({"id": [1, 2], "title": ["r", "a"], "parent_id": [0, 2]}, "own parent"),
    ({"id": [2, 3], "title": ["a", "b"], "parent_id": [3, 2]}, "cycle"),
    ({"id": [1, 1], "title": ["r", "a"], "parent_id": [0, 1]}, "duplicate ids"),
    ({"id": [], "title": [], "parent_id": []}, "empty"),
    ({"id": [1, "x"], "title": ["r", "a"], "parent_id": [0, 1]}, "whole numbers"),
])
def test_bad_trees_name_file_column_and_rows(rows, message):
    with pytest.raises(DataError, match=message) as err:
        CategoryTree.from_frame(pd.DataFrame(rows), source="tree.csv")
    assert "tree.csv" in str(err.value)


def test_missing_column_and_file(tmp_path):
    with pytest.raises(DataError, match="column 'parent_id'"):
        CategoryTree.from_frame(TREE.drop(columns="parent_id"))
    with pytest.raises(DataError, match="file not found"):
        CategoryTree.from_csv(tmp_path / "nope.csv")
