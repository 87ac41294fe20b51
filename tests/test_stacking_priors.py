"""Lookup priors: key specs, fold-excluded counts, and their use by the stacker."""
import numpy as np
import pandas as pd
import pytest

from prodcat.errors import DataError
from prodcat.stacking.priors import LookupPriors, feature_name, product_keys


def frame(titles, chars=None):
    return pd.DataFrame({"title": titles, "name_value_characteristics": chars or [None] * len(titles)})


def test_key_parts():
    f = frame(["Конфеты шоколадные, 200 г", "Milk", None],
              ["Бренд: Рот Фронт / Вес: 200 г", "brand: Valio", None])
    w1, w12, last, brand, combo = product_keys(f, ["word1", "word1+word2", "last_word", "char:Бренд|Brand",
                                                   "char:Brand+word1"])
    assert w1 == ["конфеты", "milk", None]
    assert w12[0] == "конфеты\x1fшоколадные" and w12[1] is None  # a one-word title has no word2
    assert last[0] == "200г"
    assert brand == ["рот фронт", "valio", None]
    assert combo[0] is None and combo[1] == "valio\x1fmilk"  # char names are case-insensitive


def test_unknown_part_is_a_clear_error():
    with pytest.raises(DataError, match="unknown key part 'colour'"):
        product_keys(frame(["a b"]), ["word1+colour"])


def test_feature_names_are_ascii():
    assert feature_name(0, "word1+word2") == "prior0_word1_word2"
    assert feature_name(3, "char:Бренд") == "prior3_char"
    assert feature_name(4, "Бренд") == "prior4"


def test_counts_leave_out_the_excluded_fold():
    rng = np.random.default_rng(0)
    n, k, n_classes = 300, 3, 4
    words = rng.choice(["a", "b", "c", "d", "e"], n)
    train = frame([f"{w} x" for w in words])
    test = frame(["a y", "zzz y", None])
    y = rng.integers(0, n_classes, n)
    folds = rng.integers(0, k, n)
    lp = LookupPriors.fit(["word1"], train, y, folds, k, n_classes)
    prods = np.repeat(np.arange(n), n_classes)
    cls = np.tile(np.arange(n_classes), n)
    x = lp.features(lp.codes(train), prods, cls, folds[prods])
    same = (words[prods][:, None] == words[None, :]) & (folds[None, :] != folds[prods][:, None])
    n_ref = same.sum(axis=1)
    cnt_ref = (same & (y[None, :] == cls[:, None])).sum(axis=1)
    assert np.array_equal(x["prior0_word1_n"], n_ref)
    assert np.array_equal(x["prior0_word1_cnt"], cnt_ref)
    assert np.allclose(x["prior0_word1_p"], cnt_ref / (n_ref + 1))
    # test products: fold 1 left out, or no fold (all counts, scaled by (k-1)/k); an unseen key counts 0;
    # a product without the key part (no title) has NaN features
    xt = lp.features(lp.codes(test), np.array([0, 0, 1, 2]), np.array([2, 2, 2, 2]), np.array([1, -1, 1, 1]))
    a = words == "a"
    assert xt["prior0_word1_n"][0] == (a & (folds != 1)).sum()
    assert xt["prior0_word1_cnt"][1] == pytest.approx((a & (y == 2)).sum() * (k - 1) / k)
    assert xt["prior0_word1_n"][2] == 0 and xt["prior0_word1_p"][2] == 0
    assert np.isnan(xt["prior0_word1_p"][3])


def test_train_only_products_count_in_every_fold_and_survive_a_save(tmp_path):
    train, y, folds = frame(["a x", "a y", "b x"]), np.array([0, 1, 0]), np.array([0, 1, 0])
    extra, extra_y = frame(["a z", "a z", "c z"]), np.array([1, 1, 2])  # "c": a key only they have
    lp = LookupPriors.fit(["word1"], train, y, folds, 2, 3, extra, extra_y)
    x = lp.features(lp.codes(train), np.array([0, 0]), np.array([0, 1]), np.array([0, 0]))
    assert x["prior0_word1_n"].tolist() == [1 + 2, 1 + 2]  # fold 1's "a" and both extra "a"s
    assert x["prior0_word1_cnt"].tolist() == [0, 1 + 2]
    new = frame(["c w"])
    xn = lp.features(lp.codes(new), np.array([0]), np.array([2]), np.array([-1]))
    assert xn["prior0_word1_n"].tolist() == [1] and xn["prior0_word1_cnt"].tolist() == [1]  # unscaled: no folds
    lp.save(tmp_path)
    back = LookupPriors.load(tmp_path, ["word1"], 2, 3)
    pd.testing.assert_frame_equal(back.features(back.codes(new), np.array([0]), np.array([2]), np.array([-1])), xn)


def test_a_key_no_product_has_gives_nan_features():
    train = frame(["a x", "b x"])
    lp = LookupPriors.fit(["char:Colour"], train, np.array([0, 1]), np.array([0, 1]), 2, 2)
    x = lp.features(lp.codes(frame(["a y"])), np.array([0, 0]), np.array([0, 1]), np.array([0, -1]))
    assert x.isna().all().all()


def test_saved_priors_give_the_same_features(tmp_path):
    rng = np.random.default_rng(1)
    words = rng.choice(["a", "b", "c"], 60)
    train = frame([f"{w} x" for w in words], [f"Brand: {w}{i % 2}" for i, w in enumerate(words)])
    y, folds = rng.integers(0, 3, 60), rng.integers(0, 2, 60)
    lp = LookupPriors.fit(["word1", "char:Brand+word1"], train, y, folds, 2, 3)
    lp.save(tmp_path)
    back = LookupPriors.load(tmp_path, ["word1", "char:Brand+word1"], 2, 3)
    new = frame(["b y", "q z"], ["Brand: b1", None])
    args = (np.array([0, 0, 1]), np.array([0, 2, 1]), np.array([1, -1, 0]))
    pd.testing.assert_frame_equal(lp.features(lp.codes(new), *args), back.features(back.codes(new), *args))


def test_keys_of_one_product_without_characteristics():
    """A single product with no characteristics (the API predicting one product) has NaN brand keys."""
    w1, brand, combo = product_keys(frame(["Milk fresh"]), ["word1", "char:Brand", "char:Brand+word1"])
    assert w1 == ["milk"] and brand == [None] and combo == [None]
