"""Shared fixtures: tiny datasets in the task's layout, written to a temp folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import prodcat.models  # noqa: F401 - every base model registers (the settings tests resolve without other imports)

REPO = Path(__file__).resolve().parents[1]

# root 1 > {10 Food > {11 Milk, 12 Bread}, 20 Pets > {21 Cat food, 22 Dog food > {23 Dry, 24 Wet}}}
TREE = pd.DataFrame(
    {"id": [1, 10, 11, 12, 20, 21, 22, 23, 24],
     "title": ["Все категории", "Food", "Milk", "Bread", "Pets", "Cat food", "Dog food", "Dry", "Wet"],
     "parent_id": [0, 1, 10, 10, 1, 20, 20, 22, 22]})

WORDS = {11: "milk dairy bottle", 12: "bread loaf bakery", 21: "cat kitten food", 23: "dog dry kibble",
         24: "dog wet can"}


def products(n: int, seed: int = 0, labels=True, start_id: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cats = rng.choice(list(WORDS), size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    df = pd.DataFrame({
        "id": np.arange(start_id, start_id + n, dtype=np.int64),
        "title": [f"{WORDS[c]} brand{rng.integers(5)}" for c in cats],
        "short_description": [None if i % 3 else "Nice <b>product</b>, 1,5 л" for i in range(n)],
        "name_value_characteristics": [f"Brand: b{i % 4} / Size: 1 | 2" for i in range(n)],
        "rating": np.where(np.arange(n) % 2, np.nan, 4.5),
        "feedback_quantity": np.where(np.arange(n) % 2, np.nan, 3.0),
    })
    if labels:
        df["category_id"] = cats.astype(np.int64)
    return df


def saved_and_reloaded(model, folder: Path):
    """A base model fitted on 200 products, saved as fold 0 and loaded back in this process; the products
    both predict (50 others)."""
    from prodcat.models.base import load_model, save_model

    fitted = model.fit(products(200, seed=3), folder)
    save_model(fitted, folder / "m", model.name, {"fold": 0})
    return fitted, load_model(folder / "m"), products(50, seed=4, labels=False, start_id=1050)


def write_dataset(root: Path, n_train: int = 120, n_test: int = 30, tree: pd.DataFrame | None = None,
                  train: pd.DataFrame | None = None, test: pd.DataFrame | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (TREE if tree is None else tree).to_csv(root / "categories_tree.csv", index=False)
    (products(n_train) if train is None else train).to_parquet(root / "train.parquet", index=False)
    (products(n_test, seed=1, labels=False, start_id=9000) if test is None else test).to_parquet(
        root / "test.parquet", index=False)
    return root


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_dataset(tmp_path / "tiny")


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """The default config with a small, fast fastText."""
    path = tmp_path / "test.yaml"
    path.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\npipeline: [fasttext]\n"
                    "models:\n  fasttext:\n    epoch: 50\n    lr: 0.5\n    dim: 16\n    bucket: 10000\n    thread: 1\n")
    return path


@pytest.fixture
def trained(tiny, tiny_config, tmp_path):
    """fastText + TF-IDF + stacker on the tiny dataset (3 folds), through `all`: (the common command-line
    options, the models folder, tmp_path)."""
    from click.testing import CliRunner

    from prodcat.cli import main

    cfg = tmp_path / "both.yaml"
    cfg.write_text(tiny_config.read_text().replace("pipeline: [fasttext]", "pipeline: [fasttext, tfidf]"))
    common = ["--data", tiny, "--config", cfg, "--workdir", tmp_path / "w"]
    r = CliRunner().invoke(main, [str(a) for a in ["all", *common]])
    assert r.exit_code == 0, r.output
    return common, tmp_path / "w" / "models" / "tiny", tmp_path
