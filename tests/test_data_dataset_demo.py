"""The bundled demo data: valid task layout, small, real rows with their source ids."""
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from prodcat.data.dataset import load_dataset
from prodcat.data.text import product_texts

DATA = Path(__file__).resolve().parents[1] / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_demo_data_is_small():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 15 * 2**20


def test_flipkart_demo_loads_with_thumbnails():
    ds = load_dataset(DATA / "flipkart")
    assert (len(ds.train), len(ds.test)) == (800, 250)
    with_photo = [ds.image_path("train", i) for i in ds.train["id"]]
    assert sum(p is None for p in with_photo) == 1  # a product without a photo, as in real life
    for path in [p for p in with_photo if p is not None][:50]:
        with Image.open(path) as img:
            assert max(img.size) <= 160


def test_uhtt_slice_russian_lemmas(tmp_path):
    ds = load_dataset(DATA / "uhtt_ru")
    assert (len(ds.train), len(ds.test)) == (20_000, 5_000)
    small = pd.concat([ds.train.head(200).drop(columns="category_id"), ds.test.head(50)])
    texts = product_texts(small, {"lemmatize": True}, tmp_path)
    joined = " ".join(texts)
    assert "бренд" in joined and len(texts) == 250


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
@pytest.mark.parametrize("demo, source", [("flipkart", "flipkart_ke"), ("uhtt_ru", "uhtt_ke")])
def test_ids_exactly_as_in_source(demo, source):
    for name in ("train.parquet", "test.parquet"):
        mine = pd.read_parquet(DATA / demo / name)
        theirs = pd.read_parquet(SHARED / source / name).set_index("id")
        assert mine["id"].isin(theirs.index).all()
        assert (theirs.loc[mine["id"], "title"].to_numpy() == mine["title"].to_numpy()).all()
