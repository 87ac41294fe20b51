import numpy as np
import pandas as pd
import pytest
from conftest import products, write_dataset

from prodcat.data.dataset import load_dataset
from prodcat.errors import DataError


def test_loads_and_keeps_missing_text(tiny):
    ds = load_dataset(tiny)
    assert ds.name == "tiny" and len(ds.train) == 120 and len(ds.test) == 30
    assert ds.train["short_description"].isna().sum() > 0  # None is normal data
    assert ds.train["category_id"].dtype == np.int64
    assert not ds.has_images and ds.image_path("train", 1000) is None


def test_image_lookup_split_and_flat(tmp_path):
    root = write_dataset(tmp_path / "d")
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "1000.jpg").write_bytes(b"x")
    (root / "images" / "9001.png").write_bytes(b"x")
    ds = load_dataset(root)
    assert ds.has_images
    assert ds.image_path("train", 1000).name == "1000.jpg"
    assert ds.image_path("test", 9001).name == "9001.png"
    assert ds.image_path("test", 1000) is None


def _broken(tmp_path, **changes):
    train = products(40)
    test = products(10, seed=1, labels=False, start_id=9000)
    for key, fn in changes.items():
        if key == "train":
            train = fn(train)
        else:
            test = fn(test)
    return write_dataset(tmp_path / "bad", train=train, test=test)


@pytest.mark.parametrize("change, file, column, message", [
    (dict(train=lambda d: d.drop(columns="title")), "train.parquet", "title", "missing column"),
    (dict(train=lambda d: d.assign(id=[5] * len(d))), "train.parquet", "id", "duplicate ids"),
    (dict(train=lambda d: d.assign(category_id=d["category_id"].where(d.index != 3, 777))),
     "train.parquet", "category_id", "not in categories_tree"),
    (dict(train=lambda d: d.assign(category_id=d["category_id"].where(d.index != 7, 22))),
     "train.parquet", "category_id", "not leaves"),
    (dict(train=lambda d: d.assign(category_id=d["category_id"].astype(float).where(d.index != 2, np.nan))),
     "train.parquet", "category_id", "whole numbers"),
    (dict(train=lambda d: d.assign(title=np.arange(len(d), dtype=float))), "train.parquet", "title",
     "expected text"),
    (dict(train=lambda d: d.assign(rating=["x" if i == 4 else "1" for i in range(len(d))])),
     "train.parquet", "rating", "expected numbers"),
    (dict(test=lambda d: d.assign(id=d["id"] - 9000 + 1000)), "test.parquet", "id", "ids of training products"),
])
def test_bad_input_names_file_column_rows(tmp_path, change, file, column, message):
    root = _broken(tmp_path, **change)
    with pytest.raises(DataError) as err:
        load_dataset(root).test  # the test file is read (and checked) when first used
    text = str(err.value)
    assert file in text and f"'{column}'" in text and message in text


def test_bad_rows_are_listed(tmp_path):
    root = _broken(tmp_path, train=lambda d: d.assign(category_id=d["category_id"].where(~d.index.isin([3, 8]), 777)))
    with pytest.raises(DataError, match=r"rows 3, 8"):
        load_dataset(root)


def test_missing_files(tmp_path):
    root = write_dataset(tmp_path / "d")
    (root / "test.parquet").unlink()
    ds = load_dataset(root)  # training needs no test file
    with pytest.raises(DataError, match="test.parquet: file not found"):
        ds.test
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_tree_problems_surface_from_dataset(tmp_path):
    tree = pd.DataFrame({"id": [1, 2, 3], "title": ["r", "a", "b"], "parent_id": [3, 3, 2]})
    root = write_dataset(tmp_path / "d", tree=tree)
    with pytest.raises(DataError, match="categories_tree.csv.*cycle"):
        load_dataset(root)


def test_extra_labelled_products_join_the_training_rows(tiny, tmp_path):
    """--extra (reviewers' decisions): a known product takes the extra label in its place, new products are
    appended, the content fingerprint changes; extra rows pass train.parquet's checks."""
    base = load_dataset(tiny)
    leaves = base.train["category_id"].unique()
    known = base.train.iloc[[3, 7]].copy()
    known["category_id"] = [c for c in leaves if c != known["category_id"].iloc[0]][0], known["category_id"].iloc[1]
    new = products(4, seed=5, start_id=90_000).assign(category_id=leaves[0])
    extra = tmp_path / "decisions.parquet"
    pd.concat([known, new]).to_parquet(extra, index=False)
    ds = load_dataset(tiny, extra=extra)
    assert len(ds.train) == len(base.train) + 4
    row = ds.train.iloc[3]
    assert row["id"] == known["id"].iloc[0] and row["category_id"] == known["category_id"].iloc[0]
    assert ds.train["id"].tail(4).tolist() == new["id"].tolist()
    assert ds.train.dtypes.equals(base.train.dtypes) and ds.fingerprint != base.fingerprint
    known.assign(category_id=-5).to_parquet(extra, index=False)
    with pytest.raises(DataError, match="decisions.parquet, column 'category_id': categories not in"):
        load_dataset(tiny, extra=extra)


def test_train_only_products_are_a_seeded_sample_kept_apart_from_the_training_rows(tiny, tmp_path):
    """`train_only`: a seeded sample in file order; a product also in training stays a training row only; a
    smaller sample is the start of a larger one; the content fingerprint covers them (a model given fewer has
    the fingerprint of those), the folds' (ids and labels) does not; a test id among them is refused."""
    base = load_dataset(tiny)
    more = pd.concat([base.train.iloc[:5], products(50, seed=7, start_id=50_000)], ignore_index=True)
    more.to_parquet(tiny / "more.parquet", index=False)
    ds = load_dataset(tiny, train_only="more.parquet", train_only_rows=20, seed=3)
    assert len(ds.train) == len(base.train) and len(ds.train_only) == 20
    assert ds.train_only["id"].min() >= 50_000 and ds.train_only["id"].is_monotonic_increasing
    assert ds.train_only["id"].tolist() == load_dataset(tiny, train_only="more.parquet", train_only_rows=20,
                                                        seed=3).train_only["id"].tolist()
    assert ds.fingerprint != base.fingerprint and ds.labels_fingerprint == base.labels_fingerprint
    assert len(ds.fit_frame(ds.train_frame())) == len(base.train) + 20
    assert len(load_dataset(tiny, train_only="more.parquet").train_only) == 50
    fewer = load_dataset(tiny, train_only="more.parquet", train_only_rows=8, seed=3)  # the start of the same draw
    assert ds.train_only_frame(8)["id"].tolist() == fewer.train_only["id"].tolist()
    assert set(fewer.train_only["id"]) < set(ds.train_only["id"])
    assert ds.fit_fingerprint(8) == fewer.fingerprint != ds.fingerprint == ds.fit_fingerprint(20)
    assert len(ds.fit_frame(ds.train_frame(), 8)) == len(base.train) + 8
    test = pd.read_parquet(tiny / "test.parquet")
    test.loc[:4, "id"] = ds.train_only["id"].iloc[:5].to_numpy()
    test.to_parquet(tiny / "test.parquet", index=False)
    with pytest.raises(DataError, match="test.parquet, column 'id': ids of training products"):
        load_dataset(tiny, train_only="more.parquet", train_only_rows=20, seed=3).test
    more.assign(category_id=-5).to_parquet(tiny / "more.parquet", index=False)
    with pytest.raises(DataError, match="more.parquet, column 'category_id': categories not in"):
        load_dataset(tiny, train_only="more.parquet")
    with pytest.raises(DataError, match="nope.parquet: file not found \\(the setting train_only.file"):
        load_dataset(tiny, train_only="nope.parquet")
