"""A changed tree: `tree diff` lists what changed and the training products each change touches; `predict
--tree NEW` reads the models' predictions under NEW - nothing is auto-accepted into a removed node or one
that is no longer a leaf, a moved leaf shows its new path."""
import pandas as pd
from click.testing import CliRunner
from conftest import TREE

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
