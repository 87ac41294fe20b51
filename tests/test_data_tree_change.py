"""A changed tree: `tree diff` lists what changed and the training products each change touches; `predict
--tree NEW` reads the models' predictions under NEW - nothing is auto-accepted into a removed node or one
that is no longer a leaf, a moved leaf shows its new path."""
import pandas as pd
from click.testing import CliRunner
from conftest import REPO, TREE

from prodcat.cli import main


def changed_tree(path):
    """Bread (12) removed, Wet (24) moved under Food, Dry (23) given a child, Milk (11) renamed, 20 leaves added."""
    tree = TREE[TREE["id"] != 12].copy()
    tree.loc[tree["id"] == 24, "parent_id"] = 10
    tree.loc[tree["id"] == 11, "title"] = "Milk and cream"
    added = pd.DataFrame({"id": [30] + list(range(31, 51)), "title": ["Toys"] + [f"Toy {i}" for i in range(20)],
                          "parent_id": [1] + [30] * 20})
    grain = pd.DataFrame({"id": [25], "title": ["Grain-free"], "parent_id": [23]})
    pd.concat([tree, added, grain], ignore_index=True).to_csv(path, index=False)
    return path


def test_tree_diff_and_predictions_under_a_newer_tree(trained):
    common, models, tmp = trained
    new = changed_tree(tmp / "new_tree.csv")
    r = CliRunner().invoke(main, ["tree", "diff", str(models / "categories_tree.csv"), str(new), "--data",
                                  str(common[1]), "--out", str(tmp / "changes.csv")])
    assert r.exit_code == 0, r.output
    assert "22 added, 1 removed, 1 moved, 1 renamed" in r.output
    changes = pd.read_csv(tmp / "changes.csv")
    train = pd.read_parquet(common[1] / "train.parquet")
    removed = changes[changes["change"] == "removed"].iloc[0]
    assert removed["id"] == 12 and removed["training_products"] == (train["category_id"] == 12).sum() > 0
    moved = changes[changes["change"] == "moved"].iloc[0]
    assert moved["id"] == 24 and moved["new_path"] == "Food > Wet"

    out = tmp / "under_new.parquet"
    r = CliRunner().invoke(main, ["predict", "--input", str(common[1] / "test.parquet"), "--out", str(out),
                                  "--models", str(models), "--threshold", "0", "--tree", str(new)])
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out)
    gone = table["predicted_category_id"].isin([12, 23])  # removed; no longer a leaf
    assert gone.any() and table.loc[gone, "needs_review"].all()  # a threshold of 0 accepts all the others
    assert not table.loc[~gone, "needs_review"].any()
    assert set(table.loc[table["predicted_category_id"] == 12, "tree_problem"]) <= {"removed from the tree"}
    assert table.loc[table["predicted_category_id"] == 23, "tree_problem"].str.startswith("no longer a leaf").all()
    assert (table.loc[table["predicted_category_id"] == 24, "category_path"] == "Food > Wet").all()
    assert "flagged for review, named in tree_problem" in r.output


def test_a_mapping_file_relabels_the_training_products_at_the_next_all(tmp_path):
    """A changed tree merges leaf 24 into 23 and replaces 12 by a new leaf 13: with `relabel` the training
    products are mapped before they are checked (without it the old leaves are refused, naming the setting);
    a bad mapping names its file, column and rows; models whose training rows the mapping does not change
    are reused, the others retrain."""
    import numpy as np
    import pytest
    from conftest import write_dataset

    from prodcat.errors import DataError
    from prodcat.training.run import Run
    from prodcat.training.runner import train_model

    data = write_dataset(tmp_path / "d")
    run = Run.open(data, None, tmp_path / "w", {"pipeline": ["tfidf"]})
    assert train_model(run, "tfidf", echo=lambda *a: None)
    before = run.ds.train["category_id"].to_numpy()
    new_tree = pd.concat([TREE[~TREE["id"].isin([12, 24])],
                          pd.DataFrame({"id": [13], "title": ["Bakery"], "parent_id": [10]})])
    new_tree.to_csv(data / "categories_tree.csv", index=False)
    with pytest.raises(DataError, match="not in categories_tree.csv.*relabel: FILE.csv"):
        Run.open(data, None, tmp_path / "w")
    pd.DataFrame({"old_id": [24, 12], "new_id": [23, 13]}).to_csv(data / "map.csv", index=False)
    run = Run.open(data, None, tmp_path / "w", {"relabel": "map.csv", "pipeline": ["tfidf"]})
    after = run.ds.train["category_id"].to_numpy()
    assert run.ds.relabelled == int(np.isin(before, [12, 24]).sum()) > 0
    assert np.array_equal(after, np.select([before == 24, before == 12], [23, 13], before))
    lines = []
    assert train_model(run, "tfidf", echo=lines.append)  # the labels changed: every fold retrains
    assert lines and not any("reused" in line for line in lines)
    lines.clear()
    assert train_model(run, "tfidf", echo=lines.append)  # the same content again: nothing retrains
    assert lines and all("reused" in line for line in lines)
    for bad, problem in ((pd.DataFrame({"old_id": [24], "new_id": [22]}), "new_id.*not a leaf"),
                         (pd.DataFrame({"old_id": [24, 24], "new_id": [23, 23]}), "old_id.*more than once"),
                         (pd.DataFrame({"old": [24], "new_id": [23]}), "old_id.*missing column")):
        bad.to_csv(data / "bad.csv", index=False)
        with pytest.raises(DataError, match=problem):
            Run.open(data, None, tmp_path / "w", {"relabel": "bad.csv"})


def test_a_tree_with_20_leaves_added_10_removed_10_moved_auto_accepts_nothing_into_a_removed_node(tmp_path):
    """The issue's case at its size: models of a 30-leaf tree predict under a tree that adds 20 leaves,
    removes 10 and moves 10 - `tree diff` counts them, and under `predict --tree` (every other product
    auto-accepted: threshold 0) no product is auto-accepted into a removed node; a moved leaf shows its new
    path."""
    import numpy as np
    from conftest import write_dataset

    groups = {100: "Garden", 200: "Kitchen", 300: "Tools"}
    leaves = [g + i for g in groups for i in range(1, 11)]
    tree = pd.DataFrame({"id": [1, *groups, *leaves],
                         "title": ["All", *groups.values(), *[f"Leaf {leaf}" for leaf in leaves]],
                         "parent_id": [0, 1, 1, 1, *[leaf // 100 * 100 for leaf in leaves]]})
    rng = np.random.default_rng(0)

    def frame(n, start):
        cats = rng.choice(leaves, n)
        return pd.DataFrame({"id": np.arange(start, start + n),
                             "title": [f"w{c}a w{c}b item{rng.integers(9)}" for c in cats],
                             "short_description": None, "name_value_characteristics": None, "rating": np.nan,
                             "feedback_quantity": np.nan, "category_id": cats})

    data = write_dataset(tmp_path / "d", tree=tree, train=frame(600, 1000),
                         test=frame(150, 5000).drop(columns="category_id"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds: {{k: 3}}\npipeline: [tfidf]\n")
    r = CliRunner().invoke(main, ["all", "--data", str(data), "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    new = tree[~tree["id"].between(101, 110)].copy()  # 10 leaves removed
    new.loc[new["id"].between(201, 210), "parent_id"] = 300  # 10 moved from Kitchen to Tools
    added = pd.DataFrame({"id": [400] + list(range(401, 421)), "title": ["Toys"] + [f"Toy {i}" for i in range(20)],
                          "parent_id": [1] + [400] * 20})
    pd.concat([new, added]).to_csv(tmp_path / "new.csv", index=False)
    models = tmp_path / "w" / "models" / "d"
    r = CliRunner().invoke(main, ["tree", "diff", str(models / "categories_tree.csv"), str(tmp_path / "new.csv")])
    assert r.exit_code == 0 and "21 added, 10 removed, 10 moved" in r.output, r.output
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(main, ["predict", "--input", str(data / "test.parquet"), "--out", str(out), "--models",
                                  str(models), "--threshold", "0", "--tree", str(tmp_path / "new.csv")])
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out)
    removed = table["predicted_category_id"].between(101, 110)
    assert removed.sum() > 20 and table.loc[removed, "needs_review"].all()  # never auto-accepted
    assert (table.loc[removed, "tree_problem"] == "removed from the tree").all()
    assert not table.loc[~removed, "needs_review"].any()
    moved = table["predicted_category_id"].between(201, 210)
    assert moved.any() and table.loc[moved, "category_path"].str.startswith("Tools > ").all()
