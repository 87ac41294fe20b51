"""Load and validate a dataset in the task's layout (categories_tree.csv, train.parquet, test.parquet,
optional images/{train,test}/<id>.jpg)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.errors import fail
from prodcat.tree import CategoryTree

TEXT_COLUMNS = ("title", "short_description", "name_value_characteristics")
NUMERIC_COLUMNS = ("rating", "feedback_quantity")
TEST_COLUMNS = ("id",) + TEXT_COLUMNS + NUMERIC_COLUMNS
TRAIN_COLUMNS = TEST_COLUMNS + ("category_id",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclass
class Dataset:
    """A validated dataset: the tree, train (with category_id) and test frames, and its image folder."""

    name: str
    root: Path
    tree: CategoryTree
    train: pd.DataFrame
    test: pd.DataFrame
    _image_index: dict | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """Short hash of train ids and labels: outputs computed on other data are never reused."""
        h = hashlib.sha1(self.train["id"].to_numpy().tobytes())
        h.update(self.train["category_id"].to_numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def has_images(self) -> bool:
        return bool(self._images())

    def _images(self) -> dict:
        """{(split, id): path} for every image file found (split None for a flat images/ folder)."""
        if self._image_index is None:
            index: dict = {}
            base = self.root / "images"
            if base.is_dir():
                for path in base.rglob("*"):
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.lstrip("-").isdigit():
                        split = path.parent.name if path.parent != base else None
                        index.setdefault((split, int(path.stem)), path)
            self._image_index = index
        return self._image_index

    def image_path(self, split: str, product_id: int) -> Path | None:
        """The product's photo (images/<split>/<id>.* or images/<id>.*), or None when it has none."""
        index = self._images()
        return index.get((split, int(product_id))) or index.get((None, int(product_id)))


def load_dataset(root: str | Path, name: str | None = None) -> Dataset:
    """Load and validate a dataset folder; bad input raises DataError naming file, column and rows."""
    root = Path(root)
    if not root.is_dir():
        fail(root, None, "dataset folder not found")
    tree = CategoryTree.from_csv(root / "categories_tree.csv")
    train = read_products(root / "train.parquet", TRAIN_COLUMNS)
    test = read_products(root / "test.parquet", TEST_COLUMNS)
    check_labels(train, tree, root / "train.parquet")
    overlap = np.intersect1d(train["id"].to_numpy(), test["id"].to_numpy())
    if len(overlap):
        rows = np.flatnonzero(test["id"].isin(overlap).to_numpy())
        fail(root / "test.parquet", "id", f"ids also present in train.parquet: {overlap[:5].tolist()}", rows)
    return Dataset(name=name or root.resolve().name, root=root, tree=tree, train=train, test=test)


def read_products(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a products parquet, check columns and dtypes, return a clean frame (text as str or None)."""
    if not path.exists():
        fail(path, None, "file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
        fail(path, None, f"cannot be read as parquet: {exc}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        fail(path, missing[0], f"missing column(s) {missing} (found: {list(df.columns)})")
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in ("id",) + (("category_id",) if "category_id" in columns else ()):
        out[col] = _integers(df[col], path, col)
    dup = np.flatnonzero(out["id"].duplicated(keep=False).to_numpy())
    if len(dup):
        fail(path, "id", f"duplicate ids {sorted(set(out['id'].iloc[dup].tolist()))[:5]}", dup)
    for col in TEXT_COLUMNS:
        out[col] = _texts(df[col], path, col)
    for col in NUMERIC_COLUMNS:
        out[col] = _floats(df[col], path, col)
    return out[list(columns)]


def check_labels(train: pd.DataFrame, tree: CategoryTree, path: Path) -> None:
    cats = train["category_id"].to_numpy()
    unique = np.unique(cats)
    unknown = [c for c in unique.tolist() if c not in tree]
    if unknown:
        rows = np.flatnonzero(np.isin(cats, unknown))
        fail(path, "category_id", f"categories not in categories_tree.csv: {unknown[:5]}", rows)
    inner = [c for c in unique.tolist() if not tree.is_leaf(c)]
    if inner:
        rows = np.flatnonzero(np.isin(cats, inner))
        fail(path, "category_id", f"categories that are not leaves of the tree: {inner[:5]}", rows)


def _integers(s: pd.Series, path: Path, col: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(s.dtype):
        fail(path, col, f"wrong dtype {s.dtype}: expected integers")
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy()
    if not bad.any():
        bad = (values.to_numpy() % 1) != 0
    if bad.any():
        fail(path, col, f"wrong dtype or missing value (dtype {s.dtype}): expected whole numbers",
             np.flatnonzero(bad))
    return values.astype("int64")


def _texts(s: pd.Series, path: Path, col: str) -> pd.Series:
    """Text as Python str, with None for missing; NaN/None/empty are normal data."""
    if pd.api.types.is_numeric_dtype(s.dtype) and s.notna().any():
        fail(path, col, f"wrong dtype {s.dtype}: expected text")
    values = s.astype(object).where(s.notna(), None)
    bad = [i for i, v in enumerate(values.tolist()) if v is not None and not isinstance(v, str)]
    if bad:
        fail(path, col, "expected text, found other values", bad)
    return values


def _floats(s: pd.Series, path: Path, col: str) -> pd.Series:
    values = pd.to_numeric(s, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & s.notna().to_numpy())
    if len(bad):
        fail(path, col, f"wrong dtype {s.dtype}: expected numbers", bad)
    return values.astype("float64")
