import math

import pytest
from conftest import TREE

from prodcat.data.tree import CategoryTree
from prodcat.evaluation.metrics import hf1_by_top_level, hierarchical_f1, score

TREE_ = CategoryTree.from_frame(TREE)


def test_hf1_hand_computed():
    # true 23 {20,22,23}, pred 24 {20,22,24}: inter 2, |pred| 3, |true| 3
    # true 11 {10,11},    pred 11 {10,11}:    inter 2, |pred| 2, |true| 2
    # true 21 {20,21},    pred 12 {10,12}:    inter 0, |pred| 2, |true| 2
    # micro: P = 4/7, R = 4/7 -> hF1 = 4/7
    assert hierarchical_f1([23, 11, 21], [24, 11, 12], TREE_) == pytest.approx(4 / 7)


def test_hf1_unequal_depths():
    # true 23 {20,22,23} vs pred 21 {20,21}: inter 1; P = 1/2, R = 1/3 -> F1 = 2/5
    assert hierarchical_f1([23], [21], TREE_) == pytest.approx(0.4)


def test_perfect_and_no_prediction():
    assert hierarchical_f1([11, 23], [11, 23], TREE_) == 1.0
    # -1 = no prediction: empty predicted set, recall suffers
    assert hierarchical_f1([11, 23], [11, -1], TREE_) == pytest.approx(2 * 1 * 0.4 / 1.4)


def test_score_table_values():
    s = score([11, 11, 12, 23], [11, 12, 12, 24], TREE_)
    assert s["accuracy"] == 0.5 and s["n"] == 4
    # per class F1: 11 -> 2/3 (weight 2), 12 -> 2/3 (weight 1), 23 -> 0 (weight 1) => (4/3 + 2/3)/4
    assert s["weighted_F1"] == pytest.approx(0.5)
    assert math.isnan(score([], [], TREE_)["hF1"])


def test_hf1_by_top_level():
    table = hf1_by_top_level([11, 12, 23], [11, 11, 23], TREE_).set_index("top_level")
    assert table.loc[20, "hF1"] == 1.0 and table.loc[20, "n"] == 1
    # food: (2 + 1) / ((2 + 2) + (2 + 2)) * 2 = 0.75
    assert table.loc[10, "hF1"] == pytest.approx(0.75)
    assert table.loc[10, "title"] == "Food"
