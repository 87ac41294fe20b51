"""Zero-shot suggestions of the empty leaves: a product named like an empty leaf gets it among its suggestions,
behind the decided leaf and the likely alternatives, with probability 0; the decided leaf, its confidence and
a review flag never change for it (`predict --tree NEW`: NEW's new leaves are suggested at once)."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, TREE, products

from prodcat.data.tree import CategoryTree
from prodcat.models.zero_shot import ZeroShot, empty_leaves, merge
from prodcat.probs import NO_LABEL
from prodcat.settings import ZeroShotSettings, defaults_of

PARAMS = defaults_of(ZeroShotSettings)
# TREE with two new leaves: 13 Cheese under Food, 25 Bird seed under Pets
NEWER = pd.concat([TREE, pd.DataFrame({"id": [13, 25], "title": ["Cheese", "Bird seed"], "parent_id": [10, 20]})],
                  ignore_index=True)


def test_empty_leaves_are_the_leaves_with_few_training_products():
    tree = CategoryTree.from_frame(NEWER)
    assert empty_leaves(tree, {11: 50, 12: 2, 21: 9, 23: 3, 24: 40}, 2).tolist() == [12, 13, 25]
    assert empty_leaves(tree, {11: 50, 12: 2, 21: 9, 23: 3, 24: 40}, 0).tolist() == [13, 25]


def test_a_product_named_like_an_empty_leaf_scores_it_best():
    tree = CategoryTree.from_frame(NEWER)
    scorer = ZeroShot(tree, np.array([13, 25, 12]), PARAMS)
    frame = pd.DataFrame({"id": [1, 2, 3], "title": ["Cheese gouda 45% 200g", "BIRD SEEDS mix", None]})
    labels, scores = scorer.top(frame, 4)
    assert labels[0, 0] == 13 and labels[1, 0] == 25 and scores[0, 0] > 0.5 and scores[1, 0] > 0.5
    assert labels[:, 3].tolist() == [NO_LABEL] * 3 and (scores[2] == 0).all()  # 3 leaves; no title: no score


def test_a_tree_without_titles_suggests_nothing():
    untitled = CategoryTree.from_frame(NEWER.assign(title=""))
    labels, scores = ZeroShot(untitled, np.array([13, 25]), PARAMS).top(pd.DataFrame({"title": ["cheese"]}), 2)
    assert labels.tolist() == [[NO_LABEL, NO_LABEL]] and scores.tolist() == [[0, 0]]


def test_merge_puts_empty_leaves_behind_the_likely_alternatives_and_keeps_the_decided_leaf():
    labels = np.array([[11, 12, 21, 23], [11, 12, NO_LABEL, NO_LABEL], [NO_LABEL] * 4])
    probs = np.array([[0.5, 0.3, 0.01, 0.0], [0.99, 0.01, 0, 0], [0] * 4], np.float32)
    zs = np.array([[13, 25, 12], [25, 13, 24], [13, 25, 24]])
    scores = np.array([[0.9, 0.6, 0.5], [0.2, 0.1, 0.05], [0.8, 0.7, 0.6]], np.float32)
    out, p = merge(labels, probs, zs, scores, PARAMS | {"slots": 2, "min_score": 0.3, "keep_probability": 0.05})
    assert out.tolist() == [[11, 12, 13, 25], [11, 12, NO_LABEL, NO_LABEL], [13, 25, NO_LABEL, NO_LABEL]]
    assert p[0].tolist() == [0.5, 0.30000001192092896, 0, 0] and p[1, 1] == np.float32(0.01)
    same, _ = merge(labels, probs, zs, scores, PARAMS | {"slots": 0})
    assert same.tolist() == labels.tolist()
    # an empty leaf the models also suggest, unlikely, moves up to its zero-shot place with their probability
    out, p = merge(labels[:1], probs[:1], np.array([[23, 13]]), np.array([[0.9, 0.8]], np.float32),
                   PARAMS | {"slots": 2, "min_score": 0.3, "keep_probability": 0.05})
    assert out.tolist() == [[11, 12, 23, 13]] and p[0, 3] == 0 and p[0, 2] == probs[0, 3]


def test_zero_shot_settings_are_checked():
    from prodcat.errors import SettingsError
    from prodcat.predict import Predictor

    with pytest.raises(SettingsError, match="zero_shot.slot"):
        Predictor(".", CategoryTree.from_frame(NEWER), "stack", {}, zero_shot={"slot": 2})


def test_predict_suggests_a_new_leaf_of_a_newer_tree_and_changes_no_decision(trained):
    from prodcat.cli import main
    from prodcat.predict import Predictor

    common, models, tmp = trained
    frame = pd.concat([products(20, seed=5, labels=False, start_id=80000)[["id", "title"]],
                       pd.DataFrame({"id": [90000, 90001], "title": ["cheese gouda", "bird seed millet"]})])
    newer = CategoryTree.from_frame(NEWER)
    plain = Predictor.load(models, zero_shot={"slots": 0}).predict(frame, top=5, threshold=0.7, tree=newer)
    predictor = Predictor.load(models, zero_shot={"novelty_score": 0.5})
    table = predictor.predict(frame, top=5, threshold=0.7, tree=newer)
    tops = table[[f"top{j}_category_id" for j in range(1, 6)]].to_numpy()
    probs = table[[f"top{j}_probability" for j in range(1, 6)]].to_numpy()
    assert 13 in tops[-2] and 25 in tops[-1] and (probs[np.isin(tops, [13, 25])] == 0).all()
    for col in ("predicted_category_id", "confidence", "top1_category_id"):
        assert table[col].tolist() == plain[col].tolist()
    assert (table["needs_review"] >= plain["needs_review"]).all()  # a zero-shot score only flags
    assert table["needs_review"].iloc[-2:].all() and plain["zero_shot_score"].isna().all()
    assert predictor.zero_shot(newer) is predictor.zero_shot(newer)  # built once per tree
    # the command line: --tree NEW suggests NEW's new leaves
    NEWER.to_csv(tmp / "newer.csv", index=False)
    frame.to_parquet(tmp / "named.parquet")
    r = CliRunner().invoke(main, ["predict", "--input", str(tmp / "named.parquet"), "--out", str(tmp / "zs.parquet"),
                                  "--models", str(models), "--top", "5", "--tree", str(tmp / "newer.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(tmp / "zs.parquet")
    assert 13 in out[[f"top{j}_category_id" for j in range(1, 6)]].iloc[-2].tolist()
    # review.zero_shot in a config reaches predict (here: no suggestion slot at all)
    (tmp / "no_zero_shot.yaml").write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\n"
                                           "review: {zero_shot: {slots: 0}}\n")
    r = CliRunner().invoke(main, ["predict", "--input", str(tmp / "named.parquet"), "--out", str(tmp / "zs0.parquet"),
                                  "--models", str(models), "--top", "5", "--tree", str(tmp / "newer.csv"),
                                  "--config", str(tmp / "no_zero_shot.yaml")])
    assert r.exit_code == 0, r.output
    assert pd.read_parquet(tmp / "zs0.parquet")["zero_shot_score"].isna().all()
