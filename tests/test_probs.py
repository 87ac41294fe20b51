import numpy as np
import pytest

from prodcat.probs import NO_LABEL, TopK, average


def test_from_dense_sorted_topk():
    proba = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    t = TopK.from_dense([5, 6], proba, classes=[11, 12, 23], k=2)
    assert t.labels.tolist() == [[12, 23], [11, 23]]
    assert t.scores.dtype == np.float16 and t.scores[0, 0] == np.float16(0.7)
    assert t.top1().tolist() == [12, 11]


def test_padding_missing_and_roundtrip(tmp_path):
    t = TopK.from_dense([1, 2], np.array([[0.6, 0.4], [0.5, 0.5]]), [11, 12], k=4,
                        missing=[False, True], flags={"text_only": np.array([True, False])})
    assert t.labels[0, 2:].tolist() == [NO_LABEL, NO_LABEL]
    assert t.top1()[1] == NO_LABEL
    t.save(tmp_path / "x.npz")
    back = TopK.load(tmp_path / "x.npz")
    assert np.array_equal(back.labels, t.labels) and back.missing.tolist() == [False, True]
    assert back.flags["text_only"].tolist() == [True, False]


def test_align_and_average():
    a = TopK.from_dense([1, 2], np.array([[0.8, 0.2], [0.4, 0.6]]), [11, 12], k=2)
    b = TopK.from_dense([2, 1], np.array([[0.0, 1.0], [0.4, 0.6]]), [11, 12], k=2)
    assert b.align([1, 2]).ids.tolist() == [1, 2]
    m = average([a, b])
    assert m.labels[0].tolist() == [11, 12] and m.scores[0, 0] == pytest.approx(0.6, abs=1e-3)
    assert m.labels[1, 0] == 12 and m.scores[1, 0] == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(KeyError):
        a.align([1, 3])


def test_average_skips_missing_parts():
    a = TopK.from_dense([1, 2], np.array([[0.8, 0.2], [0.4, 0.6]]), [11, 12], k=2, missing=[False, True])
    b = TopK.from_dense([1, 2], np.array([[0.6, 0.4], [0.1, 0.9]]), [11, 12], k=2, missing=[False, True])
    m = average([a, b])
    assert m.missing.tolist() == [False, True]
    assert m.scores[0, 0] == pytest.approx(0.7, abs=1e-3)
