"""The LightGBM ranking stacker and expected-hF1 decoding, on synthetic base-model outputs."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TREE, products, write_dataset

from prodcat.data.tree import CategoryTree
from prodcat.probs import TopK
from prodcat.stacking.decoding import decode, group_softmax
from prodcat.stacking.features import NodeIndex, candidate_pairs
from prodcat.stacking.stacker import Stacker
from prodcat.training.oof import load_oof
from prodcat.training.run import Run
from prodcat.training.runner import bag_of
from prodcat.training.scores import comparison_table
from prodcat.training.stack import run_stack

LEAVES = np.array([11, 12, 21, 23, 24])


def fake_model(run, name, y, confident, rng, p_conf=0.85, p_wrong=0.45, missing=None):
    """Store the OOF TopK of a simulated model: on `confident` products the truth gets p_conf, otherwise
    a random wrong leaf gets p_wrong and the truth comes second; the rest is spread evenly. Returns a
    function making the same kind of predictions for other products (per-fold predictions of a frame)."""
    def probs(truth, conf):
        n = len(truth)
        p = np.zeros((n, len(LEAVES)))
        t = np.searchsorted(LEAVES, truth)
        wrong = (t + rng.integers(1, len(LEAVES), size=n)) % len(LEAVES)
        p[np.arange(n), t] = np.where(conf, p_conf, 0.3)
        p[np.arange(n), wrong] = np.where(conf, 0.0, p_wrong)
        rest = 1 - p.sum(axis=1, keepdims=True)
        p += (p == 0) * rest / (p == 0).sum(axis=1, keepdims=True)
        return p + rng.uniform(0, 0.01, size=p.shape)

    out = run.paths.oof(name)
    ids = run.ds.train["id"].to_numpy()
    TopK.from_dense(ids, probs(y, confident), LEAVES, run.top_k, missing=missing).save(out / "oof.npz")
    bag_of(run, name).record(run.k, {"data": run.ds.fingerprint})  # a bag without children

    def predict(frame, truth):
        return TopK.from_dense(frame["id"].to_numpy(), probs(truth, rng.random(len(frame)) < 0.6), LEAVES,
                               run.top_k)
    return predict


def stacked_test(run, fakes: dict, n: int = 200):
    """The saved stacker, loaded back, on new products predicted by the fake models' 'fold models'."""
    frame = products(n, seed=9, start_id=50000)
    truth = frame.pop("category_id").to_numpy()
    stacker = Stacker.load(run.paths.models("stack"), run.ds.tree)
    parts = {m: [fake(frame, truth) for _ in range(run.k)] for m, fake in fakes.items()}
    return stacker.predict(parts, frame), truth


@pytest.fixture
def big_run(tmp_path):
    root = write_dataset(tmp_path / "syn", train=products(1500, seed=3), test=products(200, seed=4, labels=False,
                                                                                       start_id=90000))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 4\n")
    return Run.open(root, cfg, tmp_path / "w")


def hf1(run, name):
    table = comparison_table(run).set_index("model")
    return table.loc[name, "hF1"]


def test_stacker_trusts_the_confident_model_and_beats_each(big_run):
    run = big_run
    y = run.ds.train["category_id"].to_numpy()
    rng = np.random.default_rng(0)
    fakes = {"fasttext": fake_model(run, "fasttext", y, rng.random(len(y)) < 0.6, rng),
             "tfidf": fake_model(run, "tfidf", y, rng.random(len(y)) < 0.6, rng)}
    info = run_stack(run, echo=lambda *a: None)
    assert info["models"] == ["fasttext", "tfidf"]
    stack, best = hf1(run, "stack"), max(hf1(run, "fasttext"), hf1(run, "tfidf"))
    assert stack > best + 0.1, (stack, best)
    assert stack >= hf1(run, "average") - 0.01
    test, truth = stacked_test(run, fakes)
    assert len(test) == 200 and not test.missing.any() and np.isin(test.top1(), LEAVES).all()
    assert np.mean(test.top1() == truth) > 0.75  # new products: as good as the OOF rows (0.6 + 0.4 * 0.6)


def test_stacker_ignores_a_confident_weak_model(big_run):
    run = big_run
    y = run.ds.train["category_id"].to_numpy()
    rng = np.random.default_rng(1)
    fake_model(run, "fasttext", y, rng.random(len(y)) < 0.9, rng)  # strong
    fake_model(run, "tfidf", y, rng.random(len(y)) < 0.2, rng, p_conf=0.5, p_wrong=0.9)  # confidently wrong
    run_stack(run, echo=lambda *a: None)
    assert hf1(run, "stack") >= hf1(run, "fasttext") - 0.01
    assert hf1(run, "stack") > hf1(run, "average") + 0.03
    assert hf1(run, "stack") > hf1(run, "tfidf") + 0.2


def test_stacker_handles_missing_image_rows(big_run):
    run = big_run
    y = run.ds.train["category_id"].to_numpy()
    rng = np.random.default_rng(2)
    no_photo = rng.random(len(y)) < 0.3
    fake_model(run, "fasttext", y, rng.random(len(y)) < 0.6, rng)
    fake_model(run, "image", y, rng.random(len(y)) < 0.8, rng, missing=no_photo)
    info = run_stack(run, echo=lambda *a: None)
    assert "image_missing" in info["feature_importance"]
    oof = load_oof(run, "stack")
    assert not oof.missing.any()  # products without a photo still get a stacked prediction
    pred = oof.top1()
    assert np.mean(pred[no_photo] == y[no_photo]) > 0.5
    assert np.mean(pred[~no_photo] == y[~no_photo]) > np.mean(pred[no_photo] == y[no_photo])


def test_expected_hf1_decoding_picks_the_heavier_subtree():
    # root 1 > A 2 > {a1 21, a2 22}, B 3 > {b1 31}: b1 is the single most probable leaf (0.4), but the
    # A subtree holds 0.6, so a1 shares more expected ancestors with the truth
    tree = CategoryTree.from_frame(pd.DataFrame({"id": [1, 2, 21, 22, 3, 31], "title": list("rAxyBz"),
                                                 "parent_id": [0, 1, 2, 2, 1, 3]}))
    nodes = NodeIndex(tree)
    rows = np.array([0, 0, 0])
    cls = nodes.index(np.array([21, 22, 31]))
    proba = np.array([0.35, 0.25, 0.4])
    assert nodes.ids[decode(rows, cls, proba, nodes, 1, "argmax")[0]] == 31
    assert nodes.ids[decode(rows, cls, proba, nodes, 1, "expected_hf1", 0.9)[0]] == 21
    # a confident leaf is kept
    assert nodes.ids[decode(rows, cls, np.array([0.1, 0.1, 0.8]), nodes, 1, "expected_hf1", 0.9)[0]] == 31


def test_candidates_are_the_union_and_softmax_sums_to_one():
    tree = CategoryTree.from_frame(TREE)
    nodes = NodeIndex(tree)
    a = TopK.from_ranked([5, 6], [[11, 12], [21, 23]], [[0.6, 0.4], [0.7, 0.3]], 2)
    b = TopK.from_ranked([5, 6], [[12, 24], [21, 11]], [[0.9, 0.1], [0.5, 0.5]], 2)
    rows, cls = candidate_pairs([a, b], nodes, per_model=2)
    got = {(int(r), int(nodes.ids[c])) for r, c in zip(rows, cls)}
    assert got == {(0, 11), (0, 12), (0, 24), (1, 21), (1, 23), (1, 11)}
    p = group_softmax(rows, np.arange(len(rows), dtype=float), 1.0)
    assert np.allclose(np.bincount(rows, weights=p), 1.0)


def test_all_stacks_and_submits(tiny, tiny_config, tmp_path):
    from click.testing import CliRunner

    from prodcat.cli import main

    cfg = tmp_path / "both.yaml"
    cfg.write_text(tiny_config.read_text().replace("pipeline: [fasttext]", "pipeline: [fasttext, tfidf]"))
    w = tmp_path / "w"
    r = CliRunner().invoke(main, ["all", "--data", str(tiny), "--config", str(cfg), "--workdir", str(w)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "[stack] fasttext, tfidf" in r.output and "submission (stack" in r.output
    for name in ("fasttext", "tfidf", "average", "stack"):
        assert f"\n{name:>8} " in r.output or f"\n{name} " in r.output, name
    assert (w / "submissions" / "tiny" / "stack.parquet").exists()
    meta = json.loads((w / "oof" / "tiny" / "stack" / "complete.json").read_text())
    assert meta["inputs"] == ["fasttext", "tfidf"]
    common = ["--data", str(tiny), "--config", str(cfg), "--workdir", str(w)]
    r = CliRunner().invoke(main, ["stack", *common], catch_exceptions=False)
    assert "unchanged inputs, reused" in r.output
    r = CliRunner().invoke(main, ["stack", "--models", "tfidf", *common], catch_exceptions=False)
    assert "[stack] tfidf:" in r.output and "reused" not in r.output  # another subset: recomputed
    r = CliRunner().invoke(main, ["report", *common])
    assert r.exit_code == 0, r.output
    for name in ("scores", "top_level", "calibration", "coverage"):
        png = w / "reports" / "tiny" / f"{name}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    review = pd.read_csv(w / "reports" / "tiny" / "review.csv").set_index("model")
    assert {"top1", "top3", "top5", "ECE", "cover@0.98"} <= set(review.columns)
    assert (review["top1"] <= review["top3"]).all() and (review["top3"] <= review["top5"]).all()


def test_lookup_priors_lift_the_stack(big_run):
    """The synthetic titles' first word names the leaf: a prior on it makes the stack (nearly) perfect."""
    run = big_run
    y = run.ds.train["category_id"].to_numpy()
    rng = np.random.default_rng(4)
    fakes = {"fasttext": fake_model(run, "fasttext", y, rng.random(len(y)) < 0.4, rng)}
    run.cfg["stack"] = dict(run.cfg["stack"], priors=[])
    run_stack(run, echo=lambda *a: None)
    without = hf1(run, "stack")
    run.cfg["stack"]["priors"] = ["word1", "char:Brand"]
    info = run_stack(run, echo=lambda *a: None)
    assert {"prior0_word1_p", "prior1_char_brand_n"} <= set(info["feature_importance"])
    assert hf1(run, "stack") > without and hf1(run, "stack") > 0.995, (hf1(run, "stack"), without)
    test, truth = stacked_test(run, fakes)  # the saved prior tables serve new products too
    assert not test.missing.any() and np.mean(test.top1() == truth) > 0.99


def test_pair_features_of_a_small_case():
    """Probability, rank, parent-subtree mass, ratio, top, agreement: checked by hand."""
    from prodcat.stacking.features import pair_features

    nodes = NodeIndex(CategoryTree.from_frame(TREE))
    a = TopK.from_ranked([5], [[23, 24, 11]], [[0.5, 0.3, 0.2]], 3)
    b = TopK.from_ranked([5], [[24, 23]], [[0.6, 0.4]], 3)
    rows, cls = candidate_pairs([a, b], nodes, per_model=3)
    freq = np.zeros((1, len(nodes.ids)), np.float32)
    x = pair_features({"a": a, "b": b}, nodes, rows, cls, freq, np.zeros(1, np.int64))
    x.index = nodes.category(cls)
    assert x.loc[23, "a_prob"] == pytest.approx(0.5, rel=1e-3)
    assert x.loc[23, "a_rank"] == 1 and x.loc[23, "a_first"] == 1
    assert x.loc[23, "a_mass_parent"] == pytest.approx(0.8, rel=1e-3)  # 23 and 24 share the parent 22
    assert x.loc[11, "b_rank"] == 4 and x.loc[11, "b_prob"] == 0  # not in b's top: rank K+1
    assert x.loc[24, "b_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert x.loc[23, "b_ratio"] == pytest.approx(0.4 / 0.6, rel=1e-3)
    assert x.loc[23, "n_first"] == 1 and x.loc[24, "n_first"] == 1 and x.loc[11, "n_first"] == 0
    assert x.loc[23, "mean_prob"] == pytest.approx(0.45, rel=1e-3) and (x["n_candidates"] == 3).all()


def test_fit_temperature_recovers_the_scale_of_the_scores():
    from prodcat.stacking.decoding import fit_temperature

    rng = np.random.default_rng(0)
    n, c = 4000, 5
    logits = rng.normal(size=(n, c)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(c, p=row) for row in p])  # drawn from softmax(logits)
    rows = np.repeat(np.arange(n), c)
    scores = (logits * 3).ravel()  # the ranker's scores: the logits, 3 times too sharp
    is_true = (np.tile(np.arange(c), n) == np.repeat(truth, c))
    assert fit_temperature(rows, scores, is_true) == pytest.approx(3.0, rel=0.15)


def test_rankers_probabilities_are_averaged_over_the_union_of_candidates():
    from prodcat.stacking.decoding import _average_test

    one = (np.array([0, 0]), np.array([3, 4]), np.array([0.0, 0.0]))  # product 0: classes 3, 4 equal
    two = (np.array([0, 0]), np.array([4, 5]), np.array([np.log(3.0), 0.0]))  # class 4 three times class 5
    rows, cls, proba = _average_test([one, two], 1.0, 10)
    got = dict(zip(cls.tolist(), proba.tolist()))
    assert got == pytest.approx({3: 0.25, 4: 0.25 + 0.375, 5: 0.125}) and np.isclose(proba.sum(), 1.0)


def test_hidden_model_copies_and_the_oof_hf1_without_it(big_run):
    """stack.hide: a second set of rankers learns from products shown without a model and ranks the products
    it says nothing about; the OOF hF1 without it is reported (the fake fastText's mistakes are learnable:
    the stack beats it even alone)."""
    run = big_run
    y = run.ds.train["category_id"].to_numpy()
    rng = np.random.default_rng(5)
    fakes = {"fasttext": fake_model(run, "fasttext", y, rng.random(len(y)) < 0.6, rng)}
    fake_model(run, "id_neighbours", y, rng.random(len(y)) < 0.9, rng, missing=rng.random(len(y)) < 0.01)
    run.cfg["stack"] = dict(run.cfg["stack"], hide={"id_neighbours": 0.3, "image": 0.5})
    info = run_stack(run, echo=lambda *a: None)
    without = info["oof_hF1_without"]["id_neighbours"]
    assert set(info["oof_hF1_without"]) == {"id_neighbours"}  # image is not stacked: nothing to hide
    assert hf1(run, "fasttext") - 0.02 <= without <= hf1(run, "stack"), (without, hf1(run, "stack"))
    # tomorrow's products: the id model has nothing to say about any of them; the stack falls back on fastText
    frame = products(200, seed=9, start_id=50000)
    truth = frame.pop("category_id").to_numpy()
    stacker = Stacker.load(run.paths.models("stack"), run.ds.tree)
    assert set(stacker.sets) == {None, "id_neighbours"} and len(stacker.sets["id_neighbours"][0]) == run.k
    parts = {"fasttext": [fakes["fasttext"](frame, truth) for _ in range(run.k)],
             "id_neighbours": [TopK.empty(frame["id"].to_numpy(), run.top_k)] * run.k}
    test = stacker.predict(parts, frame)
    assert not test.missing.any() and np.mean(test.top1() == truth) > 0.55
