"""Rebuild the bundled demo data in data/ from ../shared/data (ids kept exactly as in the source).

  data/flipkart/  the Flipkart sample (800 train / 250 test) with photos shrunk to at most 160 px
  data/uhtt_ru/   a seeded random slice of uhtt_ke: 20,000 train and 5,000 test products (Russian text)

Usage: python data/make_demo_data.py [SHARED_DATA_DIR]
"""
import shutil
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data")


def flipkart(src: Path, dst: Path, size: int = 160) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("categories_tree.csv", "train.parquet", "test.parquet"):
        shutil.copyfile(src / name, dst / name)
    for split in ("train", "test"):
        out = dst / "images" / split
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((src / "images" / split).glob("*.jpg")):
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((size, size))
                img.save(out / path.name, quality=80, optimize=True)


def uhtt_slice(src: Path, dst: Path, n_train: int = 20_000, n_test: int = 5_000, seed: int = 0) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "categories_tree.csv", dst / "categories_tree.csv")
    train = pd.read_parquet(src / "train.parquet").sample(n=n_train, random_state=seed).sort_index()
    test = pd.read_parquet(src / "test.parquet").sample(n=n_test, random_state=seed).sort_index()
    train.to_parquet(dst / "train.parquet", index=False)
    test.to_parquet(dst / "test.parquet", index=False)


if __name__ == "__main__":
    flipkart(SOURCE / "flipkart_ke", HERE / "flipkart")
    uhtt_slice(SOURCE / "uhtt_ke", HERE / "uhtt_ru")
    print("demo data written to", HERE)
