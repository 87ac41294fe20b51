"""Load and validate a dataset in the task's layout (categories_tree.csv, train.parquet, test.parquet,
optional images/{train,test}/<id>.jpg)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.data.photos import FILE_SUFFIXES
from prodcat.data.tree import CategoryTree
from prodcat.data.tree_change import read_tree_map
from prodcat.data.tree_change import relabel as relabel_labels
from prodcat.errors import fail

TEXT_COLUMNS = ("title", "short_description", "name_value_characteristics")
NUMERIC_COLUMNS = ("rating", "feedback_quantity")
TEST_COLUMNS = ("id",) + TEXT_COLUMNS + NUMERIC_COLUMNS
TRAIN_COLUMNS = TEST_COLUMNS + ("category_id",)


class ImageFolder:
    """Photos of products in `images/{train,test}/<id>.*` or `images/<id>.*` (any split folder name)."""

    def __init__(self, base: str | Path | None):
        self.base = Path(base) if base else None
        self._index: dict | None = None

    def _images(self) -> dict:
        """{(split, id): path} for every image file found (split None for a flat images/ folder)."""
        if self._index is None:
            index: dict = {}
            if self.base is not None and self.base.is_dir():
                for path in sorted(self.base.rglob("*")):
                    if path.suffix.lower() in FILE_SUFFIXES and path.stem.lstrip("-").isdigit():
                        split = path.parent.name if path.parent != self.base else None
                        index.setdefault((split, int(path.stem)), path)
            self._index = index
        return self._index

    def __bool__(self) -> bool:
        return bool(self._images())

    def path(self, split: str | None, product_id: int) -> Path | None:
        """The product's photo: images/<split>/<id>.*, else images/<id>.*; with split None, a photo in any
        folder (the flat one first)."""
        index = self._images()
        found = index.get((split, int(product_id))) or index.get((None, int(product_id)))
        if found is None and split is None:
            found = self._any().get(int(product_id))
        return found

    def _any(self) -> dict:
        if not hasattr(self, "_by_id"):
            self._by_id = {}
            for (_, i), p in self._images().items():
                self._by_id.setdefault(i, p)
        return self._by_id

    def paths(self, ids, split: str | None) -> list[str | None]:
        return [None if (p := self.path(split, i)) is None else str(p) for i in ids]


def with_photos(frame: pd.DataFrame, images: ImageFolder, split: str | None) -> pd.DataFrame:
    """The frame with an `image_path` column (str, or None where the product has no photo)."""
    return frame.assign(image_path=pd.Series(images.paths(frame["id"].tolist(), split), index=frame.index,
                                             dtype=object))


def content_hash(frame: pd.DataFrame) -> str:
    """Short hash of every value of the frame (ids, texts, numbers, labels) and, for `image_path`, of each
    photo's size and modification time: outputs made from other content are never reused."""
    cols = [c for c in frame.columns if c != "image_path"]
    h = hashlib.sha1(pd.util.hash_pandas_object(frame[cols], index=False).to_numpy().tobytes())
    h.update(",".join(cols).encode())
    if "image_path" in frame.columns:
        for p in frame["image_path"].tolist():  # the file name, not how its folder was spelled
            st = os.stat(p) if isinstance(p, str) and os.path.exists(p) else None
            h.update(f"{os.path.basename(p)}:{st.st_size}:{st.st_mtime_ns};".encode() if st else b"-;")
    return h.hexdigest()[:12]


@dataclass
class Dataset:
    """A validated dataset: the tree, the train frame (with category_id), the test frame (read when first
    used: training never reads it) and its image folder."""

    name: str
    root: Path
    tree: CategoryTree
    train: pd.DataFrame
    test_frame: pd.DataFrame | None = field(default=None, repr=False)
    _images: ImageFolder | None = field(default=None, repr=False)
    train_only: pd.DataFrame | None = field(default=None, repr=False)  # they only fit the base models (load_dataset)
    train_only_draw: np.ndarray | None = field(default=None, repr=False)  # each one's place in the seeded draw
    relabelled: int = 0  # labelled products whose leaf the `relabel` mapping changed
    _fingerprints: dict = field(default_factory=dict, repr=False)

    @property
    def test(self) -> pd.DataFrame:
        """test.parquet, whose ids must not be training ids: train.parquet's, `extra`'s (products people
        decided: `learn` leaves test products out of them) or train-only products."""
        if self.test_frame is None:
            given = self.train
            if self.train_only is not None:
                given = pd.concat([given[["id"]], self.train_only[["id"]]])
            self.test_frame = read_test(self.root / "test.parquet", given)
        return self.test_frame

    @property
    def images(self) -> ImageFolder:
        if self._images is None:
            self._images = ImageFolder(self.root / "images")
        return self._images

    @property
    def fingerprint(self) -> str:
        """Hash of the training rows' content (every column, photos by size and mtime), train-only ones too."""
        return self.fit_fingerprint()

    def fit_fingerprint(self, n: int | None = None) -> str:
        """Hash of what a base model given `n` train-only products fits on (`fit_frame`; None: all of them)."""
        if self.train_only is None:
            n = None
        elif n is not None and n >= len(self.train_only):
            n = None
        if n not in self._fingerprints:
            own = content_hash(self.train_frame())
            self._fingerprints[n] = own if self.train_only is None else hashlib.sha1(
                f"{own}+{content_hash(self.train_only_frame(n))}".encode()).hexdigest()[:12]
        return self._fingerprints[n]

    @cached_property
    def labels_fingerprint(self) -> str:
        """Hash of train ids and labels only (what the folds are made from)."""
        h = hashlib.sha1(self.train["id"].to_numpy().tobytes())
        h.update(self.train["category_id"].to_numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def has_images(self) -> bool:
        return bool(self.images)

    def train_frame(self) -> pd.DataFrame:
        """The training rows with their `image_path` column."""
        if "image_path" not in self.train.columns:
            self.train = with_photos(self.train, self.images, "train")
        return self.train

    def train_only_frame(self, n: int | None = None) -> pd.DataFrame:
        """The first `n` train-only products of the seeded draw (None: all), in file order, with their
        `image_path` column."""
        if "image_path" not in self.train_only.columns:
            self.train_only = with_photos(self.train_only, self.images, "train")
        if n is None or n >= len(self.train_only):
            return self.train_only
        return self.train_only[self.train_only_draw < n].reset_index(drop=True)

    def fit_frame(self, rows: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
        """What a base model fits on: `rows` (training rows) followed by `n` train-only products (None: all
        of them), if any."""
        if self.train_only is None:
            return rows
        return pd.concat([rows, self.train_only_frame(n)], ignore_index=True)

    def test_with_photos(self) -> pd.DataFrame:
        return with_photos(self.test, self.images, "test")

    def image_path(self, split: str, product_id: int) -> Path | None:
        """The product's photo (images/<split>/<id>.* or images/<id>.*), or None when it has none."""
        return self.images.path(split, product_id)


def dataset_name(root: str | Path, name: str | None = None) -> str:
    """The name of a dataset's output folders: the config's `dataset_name`, else its folder's name."""
    return name or Path(root).resolve().name


def load_dataset(root: str | Path, name: str | None = None, extra: str | Path | None = None,
                 train_only: str | Path | None = None, train_only_rows: int | None = None,
                 seed: int = 0, holdout: int = 0, relabel: str | Path | None = None) -> Dataset:
    """Load and validate a dataset folder; bad input raises DataError naming file, column and rows. `extra`:
    more labelled products in the training layout (e.g. reviewers' decisions: `./run.sh review export`),
    added to the training rows; `train_only`: labelled products that only fit the base models (relative to
    the dataset folder; `train_only_rows` of them, a seeded sample; the last `holdout` of the draw never);
    `relabel`: a mapping CSV old_id,new_id of a changed tree (relative to the dataset folder), applied to every
    labelled product before its label is checked (prodcat.data.tree_change)."""
    root = Path(root)
    if not root.is_dir():
        fail(root.resolve(), None, "dataset folder not found (give --data DIR, a folder with categories_tree.csv, "
                                   "train.parquet and test.parquet)")
    tree = CategoryTree.from_csv(root / "categories_tree.csv")
    mapping = read_tree_map(root / relabel, tree) if relabel is not None else {}
    train, moved = read_labelled(root / "train.parquet", tree, mapping)
    changed = int(moved.sum())
    if extra is not None:
        train, n = with_extra(train, Path(extra), tree, mapping)
        changed += n
    only = draw = None
    if train_only is not None:
        only, draw, n = read_train_only(root / train_only, tree, train, train_only_rows, seed, holdout, mapping)
        changed += n
    return Dataset(name=dataset_name(root, name), root=root, tree=tree, train=train,
                   train_only=only, train_only_draw=draw, relabelled=changed)


def read_labelled(path: Path, tree: CategoryTree, mapping: dict, **read) -> tuple[pd.DataFrame, np.ndarray]:
    """The labelled products of `path` (the training layout) with the `relabel` mapping applied, their labels
    checked against the tree; and which rows the mapping moved."""
    frame, moved = relabel_labels(read_products(path, TRAIN_COLUMNS, **read), mapping)
    check_labels(frame, tree, path)
    return frame, moved


def read_train_only(path: Path, tree: CategoryTree, train: pd.DataFrame, rows: int | None,
                    seed: int, holdout: int = 0, mapping: dict | None = None) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Labelled products that only fit the base models: never held out, so neither in the folds' OOF nor in the
    stacker (what is scored stays train.parquet's products). A product also in training (same id) is
    trained on once, as a training row; then the first `rows` of the rest in a seeded draw (None: all), in
    file order, and each one's place in the draw (a model given fewer takes the first of them). The last
    `holdout` of the draw are never taken, whatever `rows` asks: unseen products kept for measuring. The third
    value: how many of those taken the `relabel` mapping moved."""
    frame, moved = read_labelled(path, tree, mapping or {}, missing="the setting train_only.file: a parquet in the "
                                                                    "training layout, relative to the dataset "
                                                                    "folder; null: none")
    new = ~frame["id"].isin(train["id"]).to_numpy()
    frame, moved = frame[new].reset_index(drop=True), moved[new]
    draw = np.empty(len(frame), np.int64)
    draw[np.random.RandomState(seed).permutation(len(frame))] = np.arange(len(frame))
    keep = draw < min(len(frame) - holdout, len(frame) if rows is None else rows)
    return frame[keep].reset_index(drop=True), draw[keep], int(moved[keep].sum())


def with_extra(train: pd.DataFrame, path: Path, tree: CategoryTree,
               mapping: dict | None = None) -> tuple[pd.DataFrame, int]:
    """The training rows with the labelled products of `path` added: a product already in
    training (same id) takes the extra row (its label as decided, its fields as they were then), in its
    place; new products are appended. The extra rows pass the same checks as train.parquet. The second value:
    how many extra rows the `relabel` mapping moved."""
    extra, moved = read_labelled(path, tree, mapping or {})
    where = pd.Index(train["id"]).get_indexer(extra["id"])
    known = where >= 0
    replaced = {}
    for col in train.columns:
        values = train[col].to_numpy().copy()
        values[where[known]] = extra[col].to_numpy()[known]
        replaced[col] = pd.Series(values, dtype=train[col].dtype)
    merged = pd.concat([pd.DataFrame(replaced), extra.loc[~known, list(train.columns)]], ignore_index=True)
    return merged, int(moved.sum())


def read_test(path: Path, train: pd.DataFrame | None = None) -> pd.DataFrame:
    """A test file (the training layout without category_id); ids must not be training ids."""
    test = read_products(path, TEST_COLUMNS)
    if train is not None:
        rows = seen_rows(test["id"].to_numpy(), train["id"].to_numpy())
        if len(rows):
            fail(path, "id", "ids of training products (train.parquet, --extra or train_only): "
                 f"{test['id'].iloc[rows[:5]].tolist()} (a test set holds new products only)", rows)
    return test


def seen_rows(ids: np.ndarray, train_ids: np.ndarray) -> np.ndarray:
    """Rows of `ids` that are training ids: products the models were trained on. The one rule: a test set
    (`submit`) must not hold any; `predict` predicts them with a warning (their predictions are optimistic,
    and the listing-order model reads their own label)."""
    return np.flatnonzero(np.isin(ids, train_ids))


def read_input(path: Path) -> pd.DataFrame:
    """Products to predict: `id` is required, the text and number columns are optional (empty if absent)."""
    return read_products(path, TEST_COLUMNS, optional=TEXT_COLUMNS + NUMERIC_COLUMNS)


def read_products(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = (),
                  missing: str | None = None) -> pd.DataFrame:
    """Read a products parquet and `validate_products` it (errors name the file; `missing`: what a file that
    is not there was meant to be)."""
    if not path.exists():
        fail(path.resolve(), None, "file not found" + (f" ({missing})" if missing else ""))
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
        fail(path, None, f"cannot be read as parquet: {exc}")
    return validate_products(df, path, columns, optional)


def validate_products(df: pd.DataFrame, where="products", columns: tuple[str, ...] = TEST_COLUMNS,
                      optional: tuple[str, ...] = TEXT_COLUMNS + NUMERIC_COLUMNS) -> pd.DataFrame:
    """Check a frame of products - columns, dtypes, duplicate ids - and return a clean copy (text as str or
    None, numbers as float, a fresh row index); `where` names the source in errors. The one check of
    products: files (`read_products`) and frames given to the Predictor both pass through it."""
    if not isinstance(df, pd.DataFrame):
        fail(where, None, f"expected a table of products, got {type(df).__name__}")
    df = df.reset_index(drop=True)  # a stored pandas index (even a repeated one) is no data
    for col in optional:
        if col not in df.columns:
            df[col] = None if col in TEXT_COLUMNS else np.nan
    missing = [c for c in columns if c not in df.columns]
    if missing:
        fail(where, missing[0], f"missing column(s) {missing} (found: {list(df.columns)})")
    out = {}  # one frame built at the end: a service's single product pays pandas' overhead once
    for col in ("id",) + (("category_id",) if "category_id" in columns else ()):
        out[col] = _integers(df[col], where, col)
    dup = np.flatnonzero(pd.Series(out["id"]).duplicated(keep=False).to_numpy()) if len(df) > 1 else []
    if len(dup):
        fail(where, "id", f"duplicate ids {sorted(set(out['id'][dup].tolist()))[:5]}", dup)
    for col in TEXT_COLUMNS:  # object columns of str and None (pandas would infer its string dtype)
        out[col] = pd.Series(_texts(df[col], where, col), dtype=object)
    for col in NUMERIC_COLUMNS:
        out[col] = _floats(df[col], where, col)
    out = {col: out[col] for col in columns}
    if "image_path" in df.columns:  # photos already resolved by the caller
        out["image_path"] = df["image_path"].to_numpy()
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def check_labels(train: pd.DataFrame, tree: CategoryTree, path: Path) -> None:
    cats = train["category_id"].to_numpy()
    unique = np.unique(cats)
    unknown = [c for c in unique.tolist() if c not in tree]
    if unknown:
        rows = np.flatnonzero(np.isin(cats, unknown))
        fail(path, "category_id", f"categories not in categories_tree.csv: {unknown[:5]} (a changed tree? "
                                  "map the old leaves to new ones with the setting relabel: FILE.csv, columns "
                                  "old_id,new_id; ./run.sh tree diff OLD NEW lists the changes)", rows)
    inner = [c for c in unique.tolist() if not tree.is_leaf(c)]
    if inner:
        rows = np.flatnonzero(np.isin(cats, inner))
        fail(path, "category_id", f"categories that are not leaves of the tree: {inner[:5]} (a changed tree? "
                                  "map them to leaves with the setting relabel: FILE.csv, columns old_id,new_id)",
             rows)


def _integers(s: pd.Series, path: Path, col: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(s.dtype):
        fail(path, col, f"wrong dtype {s.dtype}: expected integers")
    if pd.api.types.is_integer_dtype(s.dtype) and not s.hasnans:
        return s.to_numpy(np.int64)
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy()
    if not bad.any():
        bad = (values.to_numpy() % 1) != 0
    if bad.any():
        fail(path, col, f"wrong dtype or missing value (dtype {s.dtype}): expected whole numbers",
             np.flatnonzero(bad))
    return values.to_numpy(np.int64)


def _texts(s: pd.Series, path: Path, col: str) -> np.ndarray:
    """Text as Python str, with None for missing; NaN/None/empty are normal data."""
    missing = s.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(s.dtype) and not missing.all():
        fail(path, col, f"wrong dtype {s.dtype}: expected text")
    values = np.fromiter((None if gone else v for v, gone in zip(s.tolist(), missing)), object, len(s))
    bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
    if bad:
        fail(path, col, "expected text, found other values", bad)
    return values


def _floats(s: pd.Series, path: Path, col: str) -> np.ndarray:
    if pd.api.types.is_float_dtype(s.dtype) and isinstance(s.dtype, np.dtype):
        return s.to_numpy(np.float64)
    values = pd.to_numeric(s, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() & s.notna().to_numpy())
    if len(bad):
        fail(path, col, f"wrong dtype {s.dtype}: expected numbers", bad)
    return values.to_numpy(np.float64, na_value=np.nan)
