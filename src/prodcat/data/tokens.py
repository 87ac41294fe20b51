"""Token ids for neural text models: natasha (razdel) tokens -> lemmas -> a vocabulary built on the
training rows, with an embedding matrix initialised from navec vectors where the lemma is known.

Lemmas come from prodcat.data.text.lemma (natasha's MorphVocab, pymorphy2 underneath) for Cyrillic tokens;
other tokens (English, numbers with units) are kept as they are, so English or mixed text also works.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from prodcat.data.text import lemma, normalize, tokenize
from prodcat.errors import DataError
from prodcat.memo import BoundedMemo

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3; PAD is 0 (CoCa's pad_id)
_WORDLIKE = re.compile(r"\w")
_NUM_UNIT = re.compile(r"\d+(?:\.\d+)?[a-zа-я%]+")  # prodcat.data.text.normalize glues '1,5 л' into '1.5л'


def lemmas(text: str | None, limit: int | None = None) -> list[str]:
    """Lemmas of a product text (normalised first; punctuation dropped); at most `limit` of them.

    razdel tokenises each chunk, except a number glued to its unit by the normaliser ('1.5л', '2pcs', '3.2%'),
    which stays one token (razdel would split it into '1.5' and 'л').
    """
    text = normalize(text) if text else ""
    out = []
    for chunk in text.split():
        for tok in [chunk] if _NUM_UNIT.fullmatch(chunk) else tokenize(chunk):
            if not _WORDLIKE.search(tok):
                continue
            out.append(lemma(tok))
            if limit and len(out) >= limit:
                return out
    return out


_LEMMAS = BoundedMemo(2_000_000)  # per process: (limit, text) -> lemmas


def lemmas_many(texts, limit: int | None = None) -> list[list[str]]:
    """`lemmas` of each text, remembered per process (lemmatising is the slow part; folds and predictions
    ask for the same texts again)."""
    out = []
    for text in texts:
        out.append(_LEMMAS.get_or_make((limit, text), lambda: lemmas(text, limit)))
    return out


@dataclass
class Vocab:
    words: list[str]

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, docs, max_size: int = 30000, min_count: int = 1) -> "Vocab":
        """Most frequent lemmas of the training documents (lists of lemmas), after the special tokens."""
        counts = Counter(w for doc in docs for w in doc)
        words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                 if c >= min_count and w not in SPECIALS]
        return cls(list(SPECIALS) + words[: max(max_size - len(SPECIALS), 0)])

    def encode(self, doc: list[str], seq_len: int) -> np.ndarray:
        """<bos> lemma ids ... <eos>, cut to seq_len, padded with <pad> (0)."""
        unk = self.index[UNK]
        ids = [self.index[BOS]] + [self.index.get(w, unk) for w in doc[: seq_len - 2]] + [self.index[EOS]]
        out = np.zeros(seq_len, np.int64)
        out[: len(ids)] = ids[:seq_len]
        return out

    def encode_many(self, docs, seq_len: int) -> np.ndarray:
        return np.stack([self.encode(d, seq_len) for d in docs]) if len(docs) else np.zeros((0, seq_len), np.int64)


def default_navec_path() -> Path:
    """navec_news_v1_1B_250K_300d_100q.tar shipped inside the natasha wheel."""
    import natasha

    return Path(os.path.dirname(natasha.__file__)) / "data" / "emb" / "navec_news_v1_1B_250K_300d_100q.tar"


@lru_cache(maxsize=2)
def load_navec(path: str):
    from navec import Navec

    if not Path(path).exists():
        raise DataError(f"navec embeddings: {path} not found (set `navec:` to a navec .tar file, or `navec: none`)")
    return Navec.load(path)


def navec_matrix(vocab: Vocab, path: str | Path | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(len(vocab), 300) initial embeddings and the hit mask: navec's vector where the lemma is in navec,
    small random vectors (navec's scale) elsewhere; <pad> is zero. `path` "none": no navec, every vector
    random (300-d)."""
    navec = None if str(path) == "none" else load_navec(str(path or default_navec_path()))
    dim = navec.pq.dim if navec is not None else 300
    rng = np.random.default_rng(seed)
    hits = np.array([navec is not None and w not in SPECIALS and w in navec for w in vocab.words], bool)
    known = [navec[w] for w, h in zip(vocab.words, hits) if h]
    scale = float(np.std(known)) if known else 0.3
    matrix = rng.normal(0.0, scale, (len(vocab), dim)).astype(np.float32)
    if known:
        matrix[hits] = np.stack(known)
    matrix[0] = 0.0
    return matrix, hits
