"""Catalogue-order base model: neighbours' votes, the gap limit, saving and the fold contract."""
import numpy as np
import pandas as pd
from click.testing import CliRunner
from conftest import products, saved_and_reloaded, write_dataset

from prodcat.cli import main
from prodcat.models.base import ModelEnv
from prodcat.models.id_neighbours import IdNeighboursModel, IdNeighboursSettings, gap_setting
from prodcat.probs import TopK
from prodcat.settings import defaults_of


def model(**params):
    return IdNeighboursModel(defaults_of(IdNeighboursSettings) | params, ModelEnv(text={}, top_k=3))


def frame(ids, cats=None, titles=None):
    df = pd.DataFrame({"id": np.asarray(ids, np.int64), "title": titles if titles is not None else [""] * len(ids)})
    if cats is not None:
        df["category_id"] = np.asarray(cats, np.int64)
    return df


def test_nearest_ids_vote_with_weight_one_over_distance_and_gap():
    train = frame([10, 11, 12, 20, 21, 22], [1, 1, 2, 3, 3, 3])
    fitted = model(window=2, max_gap=100, gap_scale=1, doubt=0.5).fit(train, None)
    top = fitted.predict(frame([13]))
    # left: 12 (class 2, 1/1 / (1 + 1)), 11 (class 1, 1/2 / (1 + 2)); right: 20 (class 3, 1/1 / (1 + 7)),
    # 21 (class 3, 1/2 / (1 + 8))
    w = {2: 1 / 2, 1: 1 / 6, 3: 1 / 8 + 1 / 18}
    total = sum(w.values()) + 0.5
    assert top.labels[0].tolist() == [2, 3, 1]
    np.testing.assert_allclose(top.scores[0].astype(float), [w[2] / total, w[3] / total, w[1] / total], atol=1e-3)


def test_a_neighbour_of_the_same_product_type_counts_more():
    train = frame([10, 12], [1, 2], ["Конфеты шоколадные", "Чай чёрный"])
    fitted = model(window=1, max_gap=100, gap_scale=1e6, word_bonus=5.0, doubt=0.0).fit(train, None)
    top = fitted.predict(frame([11, 11], titles=["ЧАЙ зелёный", "Сок"]))
    assert top.labels[0].tolist()[:2] == [2, 1]
    np.testing.assert_allclose(top.scores[0, :2].astype(float), [6 / 7, 1 / 7], atol=1e-3)
    np.testing.assert_allclose(np.sort(top.scores[1, :2].astype(float)), [0.5, 0.5], atol=1e-3)  # no match


def test_ids_past_the_gap_limit_do_not_vote():
    train = frame([10, 11, 1000], [1, 1, 2])
    fitted = model(window=1, max_gap=5).fit(train, None)
    top = fitted.predict(frame([12, 500, 1003, 5000]))
    assert top.labels[:, 0].tolist()[:1] == [1] and top.labels[2, 0] == 2
    assert top.missing.tolist() == [False, True, False, True]  # nothing within 5 ids: left to the other models


def test_auto_gaps_are_percentiles_of_the_training_gaps():
    ids = np.cumsum(np.r_[1, np.ones(198, np.int64), 1000])
    assert gap_setting(ids, "auto", 99) == np.percentile(np.diff(ids), 99)
    assert gap_setting(ids, "auto", 50) == 1.0
    assert gap_setting(np.array([5]), "auto", 99) == 1.0 and gap_setting(ids, 7, 99) == 7.0
    fitted = model().fit(frame(ids, np.zeros(len(ids))), None)
    assert fitted.max_gap == np.percentile(np.diff(ids), 99) and fitted.gap_scale == 1.0


def test_saved_model_predicts_the_same_in_a_fresh_load(tmp_path):
    fitted, again, query = saved_and_reloaded(model(), tmp_path)
    a, b = fitted.predict(query), again.predict(query)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores)


def test_trains_folds_and_predicts_listing_batches(tmp_path, tiny_config):
    # products listed in batches of one category: the neighbours model recovers them from the ids alone
    train = products(150, seed=5)
    train["category_id"] = np.repeat([11, 12, 21, 23, 24], 30)
    data = write_dataset(tmp_path / "batches", train=train)
    w = tmp_path / "w"
    r = CliRunner().invoke(main, ["train", "id_neighbours", "--data", str(data), "--config", str(tiny_config),
                                  "--workdir", str(w)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    oof = TopK.load(w / "oof" / "batches" / "id_neighbours" / "oof.npz").align(train["id"].to_numpy())
    assert not oof.missing.any()
    assert np.mean(oof.top1() == train["category_id"].to_numpy()) > 0.9


def test_skipped_where_the_ids_carry_no_listing_order():
    shuffled = products(300, seed=6)  # categories drawn at random along the ids
    reason = model().skip_reason(shuffled)
    assert reason and "no listing order" in reason and "min_order" in reason
    batches = shuffled.assign(category_id=np.repeat([11, 12, 21, 23, 24], 60))
    assert model().skip_reason(batches) is None


def listed_in_batches(n: int, seed: int) -> pd.DataFrame:
    """Products whose ids run in blocks of one leaf (a catalogue listed batch by batch); titles name the leaf
    for half of them only, so the text alone is often unsure."""
    df = products(n, seed=seed).sort_values("category_id", kind="stable").reset_index(drop=True)
    df["id"] = np.arange(1000, 1000 + n, dtype=np.int64)
    vague = np.random.default_rng(seed).random(n) < 0.5
    df.loc[vague, "title"] = "item brand0"
    return df


def test_stack_and_predict_with_listing_order_and_for_tomorrows_products(tmp_path):
    from conftest import REPO

    train = listed_in_batches(300, seed=7)
    inside = train.sample(40, random_state=0).drop(columns="category_id").assign(id=lambda d: d["id"] * 10 + 5)
    data = write_dataset(tmp_path / "cat", train=train.assign(id=train["id"] * 10), test=inside)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\n"
                   "pipeline: [tfidf, id_neighbours]\n")
    common = ["--data", str(data), "--config", str(cfg), "--workdir", str(tmp_path / "w")]
    r = CliRunner().invoke(main, ["all", *common], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "[stack] tfidf, id_neighbours" in r.output and "OOF hF1 without id_neighbours" in r.output
    info = __import__("json").loads((tmp_path / "w" / "oof" / "cat" / "stack" / "stack.json").read_text())
    assert info["oof_hF1"]["expected_hf1"] > info["oof_hF1_without"]["id_neighbours"]
    # tomorrow's products: ids past every training id; the listing model says nothing, the stack still decides
    tomorrow = train.drop(columns="category_id").assign(id=lambda d: d["id"] + 10**7)
    tomorrow.to_parquet(tmp_path / "tomorrow.parquet", index=False)
    r = CliRunner().invoke(main, ["predict", "--input", str(tmp_path / "tomorrow.parquet"), "--out",
                                  str(tmp_path / "out.parquet"), *common], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == len(tomorrow) and out["predicted_category_id"].isin([11, 12, 21, 23, 24]).all()
    named = train["title"].to_numpy() != "item brand0"  # where the text names the leaf, it is still right
    assert np.mean(out["predicted_category_id"].to_numpy()[named] == train["category_id"].to_numpy()[named]) > 0.9
