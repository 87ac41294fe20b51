"""TF-IDF base model: the shortlist softmax learns many classes, and the model's fold outputs are sound."""
import numpy as np
import scipy.sparse as sp
from click.testing import CliRunner

from prodcat.cli import main
from prodcat.models.tfidf import DEFAULTS, ShortlistSoftmax
from prodcat.probs import TopK


def synthetic_sparse(n, n_classes=120, n_features=3000, seed=0):
    """Each class owns 4 features; a row holds 2 of its class's features and 3 random noise features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(n_classes, size=n)
    own = rng.permutation(n_features)[: n_classes * 4].reshape(n_classes, 4)
    cols = np.hstack([own[y][np.arange(n)[:, None], rng.integers(4, size=(n, 2))],
                      rng.integers(n_features, size=(n, 3))])
    x = sp.csr_matrix((np.ones(cols.size, np.float32), (np.repeat(np.arange(n), cols.shape[1]), cols.ravel())),
                      shape=(n, n_features))
    x.sum_duplicates()
    x = sp.diags(1 / np.sqrt(x.multiply(x).sum(axis=1)).A1) @ x
    return x.tocsr().astype(np.float32), y


def test_shortlist_softmax_learns_many_classes():
    x, y = synthetic_sparse(6000)
    p = DEFAULTS | {"shortlist": 15, "epochs": 5, "lr": 2.0}
    clf = ShortlistSoftmax(p, seed=0).fit(x[:5000], y[:5000], 120)
    labels, scores = clf.predict_top(x[5000:], 5)
    assert labels.shape == (1000, 5) and np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    assert np.all(scores.sum(axis=1) <= 1 + 1e-4)  # a distribution over the shortlist
    assert np.mean(labels[:, 0] == y[5000:]) > 0.9
    # the softmax beats the centroid shortlist it re-ranks
    centroid_top1 = clf.shortlist(x[5000:])[:, 0]
    assert np.mean(labels[:, 0] == y[5000:]) >= np.mean(centroid_top1 == y[5000:])


def test_few_classes_use_every_class():
    x, y = synthetic_sparse(600, n_classes=5, n_features=200)
    clf = ShortlistSoftmax(DEFAULTS | {"shortlist": 50}, seed=0).fit(x, y, 5)
    assert clf.shortlist(x).shape == (600, 5)
    assert clf.train_recall == 1.0


def test_tfidf_trains_folds_and_writes_oof(tiny, tiny_config, tmp_path):
    w = tmp_path / "w"
    r = CliRunner().invoke(main, ["train", "tfidf", "--data", str(tiny), "--config", str(tiny_config),
                                  "--workdir", str(w)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    oof = TopK.load(w / "oof" / "tiny" / "tfidf" / "oof.npz")
    assert len(oof) == 120 and not oof.missing.any()
    assert sorted(p.name for p in (w / "models" / "tiny" / "tfidf").glob("fold*")) == ["fold0", "fold1", "fold2"]
    from prodcat.training.oof import load_oof
    from prodcat.training.run import Run
    from prodcat.training.scores import score_oof

    run = Run.open(tiny, tiny_config, w)
    assert score_oof(run, load_oof(run, "tfidf"))["hF1"] > 0.95  # the titles name their category
    r = CliRunner().invoke(main, ["train", "tfidf", "--data", str(tiny), "--config", str(tiny_config),
                                  "--workdir", str(w)], catch_exceptions=False)
    assert "finished earlier, reused" in r.output


def test_sparse_weights_predict_like_the_dense_ones():
    """The saved (sparse) weights give the probabilities the dense training weights give."""
    x, y = synthetic_sparse(3000, n_classes=40)
    clf = ShortlistSoftmax(DEFAULTS | {"shortlist": 10, "epochs": 3, "prune": 0.0}, seed=0)
    clf.sparsify = lambda: None  # keep the dense weights to compare with
    clf.fit(x[:2500], y[:2500], 40)
    dense = clf.w
    cands = clf.shortlist(x[2500:])
    z = np.take_along_axis(x[2500:] @ dense, cands, axis=1) + clf.b[cands]
    want = np.exp(z - z.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    del clf.sparsify
    labels, scores = clf.predict_top(x[2500:], 10)
    assert not hasattr(clf, "w") and clf.weights.nnz < dense.size / 2
    got = np.take_along_axis(want, np.argsort(-want, axis=1, kind="stable"), axis=1)
    assert np.allclose(scores, got, atol=1e-3)  # the weights are kept at float16 precision


def test_char_ngrams_by_word_are_scikit_learns_matrix():
    """char_wb_tfidf (each distinct word analysed once) gives exactly TfidfVectorizer.transform's matrix:
    repeated words, words unseen in training, one-letter and long words, extra spaces, empty texts."""
    from prodcat.models.tfidf import Featurizer, char_wb_tfidf

    rng = np.random.default_rng(0)
    words = ["молоко", "ж", "шоколадные", "1.5л", "x" * 30, "ab", "ёлка", "конфеты", "milk", "200г"]
    train = [" ".join(rng.choice(words[:7], rng.integers(1, 6))) for _ in range(200)]
    new = [" ".join(rng.choice(words, rng.integers(0, 9))) for _ in range(300)] + ["", "  ab   ab  ", "zzz"]
    for p in ({"char_ngrams": [2, 5], "char_min_df": 1}, {"char_ngrams": [3, 4], "char_min_df": 5}):
        featurizer = Featurizer(DEFAULTS | p)
        featurizer.char.fit(train)
        want, got = featurizer.char.transform(new), char_wb_tfidf(featurizer.char, new)
        assert want.shape == got.shape and np.array_equal(want.indptr, got.indptr)
        assert np.array_equal(want.indices, got.indices) and np.array_equal(want.data, got.data)
