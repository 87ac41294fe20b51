"""Nearest-training-products base model: the votes, common terms, saving and the fold contract."""
import numpy as np
import pandas as pd
from click.testing import CliRunner
from conftest import products, saved_and_reloaded, write_dataset

from prodcat.cli import main
from prodcat.models.base import ModelEnv
from prodcat.models.knn import KnnModel, KnnSettings
from prodcat.probs import TopK
from prodcat.settings import defaults_of


def model(**params):
    return KnnModel(defaults_of(KnnSettings) | {"min_df": 1} | params, ModelEnv(text={}, top_k=3))


def frame(titles, cats=None, start=1):
    df = pd.DataFrame({"id": np.arange(start, start + len(titles), dtype=np.int64), "title": titles,
                       "short_description": None, "name_value_characteristics": None})
    if cats is not None:
        df["category_id"] = np.asarray(cats, np.int64)
    return df


def test_the_most_similar_training_products_vote_with_similarity_to_a_power():
    train = frame(["шоколад молочный alpen gold", "шоколад горький alpen gold", "чай черный greenfield",
                   "чай зеленый greenfield"], [1, 2, 3, 3])
    fitted = model(neighbours=2, power=1.0).fit(train, None)
    top = fitted.predict(frame(["шоколад молочный alpen gold 90г", "чай greenfield", "велосипед"], start=100))
    x, index = fitted.features(frame(["шоколад молочный alpen gold 90г"])), fitted.index
    sims = (x @ index).toarray().ravel()  # cosine similarities to the four training titles
    best = np.argsort(-sims)[:2]
    assert top.labels[0, 0] == 1 and set(train["category_id"].to_numpy()[best]) == {1, 2}
    np.testing.assert_allclose(top.scores[0, :2].astype(float), sims[best] / sims[best].sum(), atol=2e-3)
    np.testing.assert_allclose(top.flags["nearest"][0], sims.max(), atol=1e-5)
    assert top.labels[1, 0] == 3 and top.scores[1, 0] == 1.0  # both neighbours are tea
    assert top.missing.tolist() == [False, False, True]  # no shared word: no prediction


def test_terms_in_too_many_training_products_are_not_searched():
    train = frame(["для дома лампа", "для дома ваза", "для сада лопата", "для сада грабли"], [1, 2, 3, 4])
    fitted = model(max_postings=2).fit(train, None)
    top = fitted.predict(frame(["для", "лопата для"], start=10))
    assert top.missing.tolist() == [True, False] and top.labels[1, 0] == 3


def test_saved_model_predicts_the_same_in_a_fresh_load(tmp_path):
    fitted, again, query = saved_and_reloaded(model(), tmp_path)
    a, b = fitted.predict(query), again.predict(query)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.flags["nearest"], b.flags["nearest"])
    again.params["chunk"] = 7  # several chunks on two threads: the same answer
    c = again.predict(query)
    assert np.array_equal(a.labels, c.labels) and np.array_equal(a.scores, c.scores)


def test_trains_folds_and_scores_out_of_fold(tmp_path, tiny_config):
    train = products(150, seed=5)
    data = write_dataset(tmp_path / "near", train=train)
    w = tmp_path / "w"
    r = CliRunner().invoke(main, ["train", "knn", "--data", str(data), "--config", str(tiny_config),
                                  "--workdir", str(w)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    oof = TopK.load(w / "oof" / "near" / "knn" / "oof.npz").align(train["id"].to_numpy())
    y = train["category_id"].to_numpy()
    have = ~oof.missing
    assert have.mean() > 0.9 and np.mean(oof.top1()[have] == y[have]) > 0.5
    assert "nearest" in oof.flags


def test_the_nearest_similarity_is_kept_as_a_number_in_files_and_averages(tmp_path):
    # the stacker learns from the stored OOF flags and scores the fold models' flags: the same values both ways
    train = products(200, seed=3)
    query = products(30, seed=4, labels=False, start_id=1050)
    tops = [model().fit(train.iloc[i::2], None).predict(query) for i in (0, 1)]
    tops[0].save(tmp_path / "t.npz")
    stored = TopK.load(tmp_path / "t.npz").flags["nearest"]
    assert stored.dtype == np.float32 and np.array_equal(stored, tops[0].flags["nearest"])
    assert 0 < stored.max() <= 1.0001 and len(np.unique(stored)) > 2
    from prodcat.probs import average

    mean = average(tops).flags["nearest"]
    np.testing.assert_allclose(mean, (tops[0].flags["nearest"] + tops[1].flags["nearest"]) / 2, rtol=1e-6)


def test_decided_products_are_neighbours_at_once_a_new_leaf_included_and_forgotten_when_undone():
    """`remember`: products people decided since the fit are searched beside the training products and vote
    like them - a leaf no training product has (a new category) is suggested from its first decisions - and
    a new memory replaces the old (an undone decision is gone); the training products' votes are unchanged."""
    train = frame(["шоколад молочный alpen gold", "шоколад горький alpen gold", "чай черный greenfield",
                   "чай зеленый greenfield", "матча порошок alpen"], [1, 2, 3, 3, 1])
    fitted = model(neighbours=3, power=1.0).fit(train, None)
    query = frame(["чай матча порошок greenfield 100г", "шоколад молочный alpen gold 90г"], start=100)
    before = fitted.predict(query)
    # the models' vocabulary is the fit's: a decided product is found by the words it shares with it
    fitted.remember(frame(["чай матча порошок greenfield"], [7]), np.array([7]))  # 7: a new leaf
    taught = fitted.predict(query)
    assert taught.labels[0, 0] == 7 and 7 not in before.labels  # the nearest now, and a class of its own
    assert taught.flags["nearest"][0] > before.flags["nearest"][0]
    assert np.array_equal(taught.labels[1], before.labels[1])  # its own neighbours outvote it: unchanged
    fitted.remember(None, None)
    again = fitted.predict(query)
    assert np.array_equal(again.labels, before.labels) and np.array_equal(again.scores, before.scores)
