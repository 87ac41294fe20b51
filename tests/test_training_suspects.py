"""`review suspects`: training labels the out-of-fold predictions contradict confidently (Cleanlab's confident
learning) are listed and queued as catalogue checks with the current label as an option; a correction
replaces the training label at `learn`."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import products, write_dataset

from prodcat.cli import main
from prodcat.training.suspects import dense_probabilities


def test_dense_probabilities_keep_the_top_k_and_spread_the_rest():
    classes = np.array([11, 12, 21, 23])
    probs = dense_probabilities(np.array([[12, 11], [21, -1]]), np.array([[0.6, 0.3], [1.0, 0.0]]), classes)
    np.testing.assert_allclose(probs[0], [0.3, 0.6, 0.05, 0.05], atol=1e-6)
    np.testing.assert_allclose(probs[1], [0, 0, 1, 0], atol=1e-6)


def test_wrong_training_labels_are_found_queued_and_replaced_at_learn(tmp_path, tiny_config):
    train = products(150, seed=2)
    wrong = train.index[::25]  # 6 labels changed to another leaf
    truth = train.loc[wrong, "category_id"].copy()
    train.loc[wrong, "category_id"] = np.where(truth == 11, 12, 11)
    data = write_dataset(tmp_path / "d", train=train)
    common = ["--data", str(data), "--config", str(tiny_config), "--workdir", str(tmp_path / "w")]
    assert CliRunner().invoke(main, ["all", *common]).exit_code == 0
    out = tmp_path / "suspects.csv"
    r = CliRunner().invoke(main, ["review", "suspects", *common, "--out", str(out)])
    assert r.exit_code == 0, r.output
    found = pd.read_csv(out)
    hits = set(found["id"]) & set(train.loc[wrong, "id"])
    assert len(hits) >= 4 and len(hits) / len(found) >= 0.5, found  # recall and precision on this data
    assert "added to the queue as catalogue checks" in r.output
    from prodcat.data.tree import CategoryTree
    from prodcat.review.queue import open_store
    from prodcat.training.run import settings_and_paths

    cfg, paths = settings_and_paths(str(data), str(tiny_config), str(tmp_path / "w"))
    store = open_store(cfg, paths, CategoryTree.from_csv(data / "categories_tree.csv"))
    item = store.item(int(found["id"].iloc[0]))
    assert item["reason"] == "suspect" and item["suggestions"][1][0] == found["current_category_id"].iloc[0]
    row = found.iloc[0]
    claimed = store.claim_next("ann")
    store.decide(claimed["product_id"], int(claimed["suggestions"][0][0]), "accept", "ann", "suspect-1")
    exported = store.export_training_rows()
    assert exported["id"].tolist() == [claimed["product_id"]] and row["id"] in set(found["id"])
    store.close()


def test_small_classes_are_counted_not_warned(recwarn):
    from prodcat.training.suspects import label_issues

    rng = np.random.default_rng(0)
    given = np.r_[np.zeros(60, int), np.ones(60, int), [2]]  # class 2: one product
    probs = np.full((len(given), 3), 0.05)
    probs[np.arange(len(given)), given] = 0.9
    probs[:5] = [0.05, 0.9, 0.05]  # five of class 0 look like class 1
    probs[-1] = [0.9, 0.05, 0.05]  # the lone product of class 2 looks like class 0
    probs = probs + rng.random(probs.shape) * 0.01
    issues, small = label_issues(given, probs / probs.sum(axis=1, keepdims=True), "both")
    assert set(issues.tolist()) and set(issues.tolist()) <= {0, 1, 2, 3, 4, len(given) - 1}
    assert small >= 1 and not [w for w in recwarn if "too few examples" in str(w.message)]


def test_other_warnings_of_cleanlab_are_passed_on(monkeypatch):
    import warnings

    import cleanlab.filter

    from prodcat.training.suspects import label_issues

    def fake(given, probs, **kwargs):
        warnings.warn("May not flag all label issues in class: 3, it has too few examples")
        warnings.warn("something else cleanlab says", FutureWarning)
        return np.array([0])

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", fake)
    with pytest.warns(FutureWarning, match="something else"):
        issues, small = label_issues(np.array([0, 1]), np.full((2, 2), 0.5), "both")
    assert issues.tolist() == [0] and small == 1
