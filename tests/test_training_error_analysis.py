"""The error analysis: kinds of mistakes in the tree, class sizes, catch-all leaves, depth."""
import numpy as np
import pandas as pd

from prodcat.data.tree import CategoryTree
from prodcat.training.error_analysis import (by_class_size, by_depth, catch_all_leaves, error_report,
                                            mistake_kinds, others_right)

# root 1 > {10 Food > {11 Milk, 12 Bread, 13 Food (catch-all)}, 20 Pets > {21 Cat, 22 Dog > {23 Dry, 24 Wet}}}
TREE = CategoryTree.from_frame(pd.DataFrame({
    "id": [1, 10, 11, 12, 13, 20, 21, 22, 23, 24],
    "title": ["root", "Food", "Milk", "Bread", "food ", "Pets", "Cat", "Dog", "Dry", "Wet"],
    "parent_id": [0, 1, 10, 10, 10, 1, 20, 20, 22, 22]}))


def test_mistakes_are_sorted_by_their_distance_in_the_tree():
    y = np.array([11, 11, 23, 23, 21, 12])
    pred = np.array([12, 11, 24, 21, 11, 12])  # sibling, right, sibling, same top level, other top level, right
    table = mistake_kinds(y, pred, TREE).set_index("kind")
    assert table["errors"].tolist() == [2, 1, 1] and np.isclose(table["share"].sum(), 1.0)


def test_catch_all_leaves_class_sizes_and_depth():
    assert catch_all_leaves(TREE) == {13}
    y = np.array([11] * 100 + [13] * 4 + [23])
    pred = np.array([11] * 100 + [11] * 4 + [24])
    sizes = by_class_size(y, pred, TREE).set_index("class size")
    assert sizes.loc["1-2", "products"] == 1 and sizes.loc["1-2", "accuracy"] == 0
    assert sizes.loc["3-5", "products"] == 4 and sizes.loc["100+", "accuracy"] == 1
    report = error_report(y, pred, TREE)
    assert report["catch_all"].iloc[0]["errors involving one"] == 4
    depth = by_depth(y, pred, TREE).set_index("depth")["right down to this depth"]
    assert depth[1] == 1.0 and np.isclose(depth[2], 101 / 105) and depth[3] == 0.0  # 23 vs 24 differ at 3
    from prodcat.evaluation.metrics import hierarchical_f1

    hf1 = by_depth(y, pred, TREE).set_index("depth")["hF1 to this depth"]
    assert hf1[1] == 1.0  # every top level is right
    assert np.isclose(hf1[3], hierarchical_f1(y, pred, TREE))  # cut at the deepest level: the whole hF1
    assert hf1[2] > hf1[3]  # the deeper, the more of the mistakes count


def test_others_right_counts_the_mistakes_another_model_gets_right():
    y = np.array([11, 12, 21, 23, 24])
    pred = np.array([11, 11, 11, 23, 23])  # wrong on 12, 21 and 24
    table = others_right(y, pred, {"a": np.array([11, 12, 21, 24, -1]), "b": y.copy()}).set_index("model")
    assert table.loc["a", "right where this one is wrong"] == 2 and table.loc["b", "share of its mistakes"] == 1.0
    assert np.isclose(table.loc["a", "share of products"], 2 / 5)
