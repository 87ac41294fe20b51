"""Degenerate data that can still be served works (with a warning) instead of failing inside a library."""
import warnings

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import products, write_dataset

from prodcat.cli import main


def _singletons():
    train = products(12)
    train["category_id"] = list(range(100, 112))
    tree = pd.DataFrame({"id": [1] + list(range(100, 112)), "title": ["root"] + [f"c{i}" for i in range(12)],
                         "parent_id": [0] + [1] * 12})
    return {"train": train, "tree": tree}, "true class among the candidates"


def _empty_texts():
    train = products(60)
    train[["title", "short_description", "name_value_characteristics"]] = None
    return {"train": train}, "no text to learn from"


CASES = {
    "empty_test_file": lambda: ({"test": products(0, labels=False, start_id=9000)}, None),
    "every_class_a_singleton": _singletons,
    "all_texts_empty": _empty_texts,
    "fewer_products_than_folds": lambda: ({"train": products(2)}, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_degenerate_data_is_served(case, tiny_config, tmp_path):
    kwargs, warning = CASES[case]()
    root = write_dataset(tmp_path / case, **kwargs)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config.read_text().replace("pipeline: [fasttext]", "pipeline: [fasttext, tfidf]"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(main, ["all", "--data", str(root), "--config", str(cfg), "--workdir",
                                      str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    sub = pd.read_parquet(tmp_path / "w" / "submissions" / case / "stack.parquet")
    test = pd.read_parquet(root / "test.parquet")
    assert sub["id"].tolist() == test["id"].tolist()
    if case == "all_texts_empty":  # listed, by id
        listed = pd.read_csv(tmp_path / "w" / "reports" / case / "empty_products_train.csv")
        assert len(listed) == 60 and "60 training products have no usable text" in r.output
    if warning:  # said once, as a warning or a [stack] line
        assert warning in r.output + " ".join(str(w.message) for w in caught)
