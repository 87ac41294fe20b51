"""A product's text: title, description and parsed characteristics, normalised, optionally lemmatised.

`product_texts` is the one entry point for models; it caches its result per dataset and settings.
"""
from __future__ import annotations

import hashlib
import re
import threading
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd

from prodcat.memo import BoundedMemo
from prodcat.progress import progress
from prodcat.settings import TextSettings, config_hash, defaults_of
from prodcat.storage import write_parquet

UNITS = ("мл", "л", "гр", "г", "кг", "мг", "см", "мм", "м", "шт", "уп", "пак", "таб", "капс", "%", "ml", "l",
         "gr", "g", "kg", "mg", "cm", "mm", "m", "pcs", "pc", "inch", "in", "вт", "w", "в", "v", "мач", "mah",
         "гб", "gb", "тб", "tb", "мп", "mp", "гц", "hz", "x", "х")
_TAG = re.compile(r"<[^>]+>")
_NUM_UNIT = re.compile(r"(\d+(?:[.,]\d+)?)\s*(" + "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True))
                       + r")(?![a-zа-я])")
_DECIMAL = re.compile(r"(\d),(\d)")
_NON_WORD = re.compile(r"[^\w.%]+|(?<!\d)\.|\.(?!\d)")
_SPACES = re.compile(r"\s+")
_CHAR_SPLIT = re.compile(r"\s*/\s*(?=[^/|:]{1,80}:)")

DEFAULT_TEXT = defaults_of(TextSettings)  # declared (with their docs) in prodcat.settings


def parse_characteristics(value: str | None) -> list[tuple[str, list[str]]]:
    """'name1: v1 | v2 / name2: v1' -> [('name1', ['v1', 'v2']), ('name2', ['v1'])]."""
    if not value or not isinstance(value, str):
        return []
    out = []
    for part in _CHAR_SPLIT.split(value.strip()):
        if not part.strip():
            continue
        name, sep, values = part.partition(":")
        if not sep:
            name, values = "", name
        vals = [v.strip() for v in values.split("|") if v.strip()]
        out.append((name.strip(), vals))
    return out


def normalize(text: str | None) -> str:
    """Lower case, ё->е, no HTML or punctuation, numbers glued to their units ('1,5 л' -> '1.5л')."""
    if not text or not isinstance(text, str):
        return ""
    text = _TAG.sub(" ", text).lower().replace("ё", "е")
    text = _DECIMAL.sub(r"\1.\2", text)
    text = _NUM_UNIT.sub(r"\1\2", text)
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def build_text(title, description, characteristics, cfg: dict | None = None) -> str:
    """One product's normalised text from its three text fields."""
    cfg = {**DEFAULT_TEXT, **(cfg or {})}
    parts = []
    if "title" in cfg["fields"]:
        parts += [normalize(title)] * int(cfg["title_repeat"])
    if "name_value_characteristics" in cfg["fields"]:
        for name, values in parse_characteristics(characteristics):
            if cfg["characteristic_names"] and name:
                parts.append(normalize(name))
            parts.extend(normalize(v) for v in values)
    if "short_description" in cfg["fields"] and isinstance(description, str):
        parts.append(normalize(description[: int(cfg["description_chars"])]))
    return " ".join(p for p in parts if p)


@lru_cache(maxsize=1)
def _morph():
    with warnings.catch_warnings():  # pymorphy2 imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        from natasha import MorphVocab

        return MorphVocab()


@lru_cache(maxsize=500_000)
def lemma(token: str) -> str:
    """Dictionary form of one token (natasha's MorphVocab, pymorphy2 underneath); non-Cyrillic kept."""
    if not re.search("[а-я]", token):
        return token
    parses = _morph()(token)
    return parses[0].normal.replace("ё", "е") if parses else token


def tokenize(text: str) -> list[str]:
    """natasha's razdel tokenisation of an already normalised text."""
    from razdel import tokenize as razdel_tokenize

    return [t.text for t in razdel_tokenize(text)]


def lemmatize(text: str) -> str:
    return " ".join(lemma(t) for t in text.split())


_MEMO = BoundedMemo(4)  # text settings -> texts indexed by the row hash of the product's text fields
_MEMO_TEXTS = 3_000_000  # texts kept per setting (a memo that would grow past it keeps the newest frame's)
_MEMO_MIN_ROWS = 1_000  # smaller frames (a service's requests) are cheaper to build than to remember
_MEMO_LOCK = threading.Lock()


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """64-bit hash of each product's text fields: equal fields, equal text."""
    cols = ["title", "short_description", "name_value_characteristics"]
    return pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()


def product_texts(frame: pd.DataFrame, cfg: dict | None, cache_dir=None) -> pd.Series:
    """Normalised text of every product of `frame` (index: its ids). Keyed by content, never by ids: texts
    are remembered per process by the hash of a product's text fields and, with `cache_dir`, stored per
    frame content and settings."""
    cfg = {**DEFAULT_TEXT, **(cfg or {})}
    cfg_key = config_hash(cfg)
    if len(frame) < _MEMO_MIN_ROWS and cache_dir is None:
        return pd.Series(build_texts(frame, cfg), index=frame["id"].to_numpy(), name="text", dtype=object)
    with _MEMO_LOCK:
        return _memo_texts(frame, cfg, cfg_key, cache_dir)


def build_texts(frame: pd.DataFrame, cfg: dict) -> list[str]:
    """The text of each product of `frame` for these (complete) text settings, lemmatised when asked."""
    texts = [build_text(t, d, c, cfg) for t, d, c in progress(
        zip(frame["title"], frame["short_description"], frame["name_value_characteristics"]),
        len(frame), "text", "product", min_total=50_000)]
    if cfg["lemmatize"]:
        texts = [lemmatize(t) for t in progress(texts, len(texts), "lemmas", "product", min_total=5_000)]
    return texts


def _memo_texts(frame: pd.DataFrame, cfg: dict, cfg_key: str, cache_dir) -> pd.Series:
    memo = _MEMO.get(cfg_key, pd.Series(dtype=object))
    hashes = row_hashes(frame)
    known = pd.Index(memo.index).get_indexer(hashes) if len(memo) else np.full(len(hashes), -1)
    if (known < 0).any():
        todo = np.flatnonzero(known < 0)
        path = None
        if cache_dir is not None:
            key = hashlib.sha1(hashes.tobytes()).hexdigest()[:12]
            path = cache_dir / f"text-{cfg_key}-{key}.parquet"
        if path is not None and path.exists():
            cached = pd.read_parquet(path)
            new = pd.Series(cached["text"].to_numpy(), index=cached["hash"].to_numpy())
        else:
            new = pd.Series(build_texts(frame.iloc[todo], cfg), index=hashes[todo], dtype=object)
            if path is not None:
                write_parquet(pd.DataFrame({"hash": new.index.to_numpy(), "text": new.to_numpy()}), path)
        new = new[~new.index.duplicated()]
        if len(memo) and len(memo) + len(new) <= _MEMO_TEXTS:
            memo = pd.concat([memo, new[~new.index.isin(memo.index)]])
        else:
            memo = pd.concat([memo[memo.index.isin(hashes)], new[~new.index.isin(memo.index)]])
        _MEMO.put(cfg_key, memo)
        known = pd.Index(memo.index).get_indexer(hashes)
    return pd.Series(memo.to_numpy()[known], index=frame["id"].to_numpy(), name="text")


def report_empty_products(frame, texts, path, what: str, echo) -> None:
    """Products whose text is empty once cleaned (no title, description or characteristics, or only
    emoji, symbols or control characters) are kept, as empty texts, and listed in `path` (a CSV), with one
    summary line."""
    from prodcat.storage import write_csv

    empty = (texts.str.strip() == "").to_numpy()
    if not empty.any():
        return
    write_csv(pd.DataFrame({"id": frame["id"].to_numpy()[empty], "reason": "no usable text (nothing left of the "
                            "title, description and characteristics once cleaned): treated as an empty text"}), path)
    echo(f"warning: {int(empty.sum())} {what} have no usable text (listed in {path})")
