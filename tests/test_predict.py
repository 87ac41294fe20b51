"""Fit once, predict any file: saved fold models load in a fresh process and predict identically; predict
equals the submission; new prediction inputs are predicted again without retraining; review thresholds."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from click.testing import CliRunner
from conftest import REPO, products

from prodcat.cli import main
from prodcat.evaluation.review import pick_threshold
from prodcat.predict import Predictor
from prodcat.probs import TopK


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fresh_python(code: str) -> None:
    """Run `code` in a new Python process (nothing shared with this one but the files)."""
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same(a: TopK, b: TopK):
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.missing, b.missing)


def test_fold_models_predict_their_oof_rows_identically_in_a_fresh_process(trained):
    """Each fold model, loaded in a new process, reproduces the held-out predictions its in-memory self
    made while training (stored in oof/)."""
    common, models, tmp = trained
    code = f"""
import pandas as pd
from prodcat.models.base import load_model
from prodcat.training.run import Run
run = Run.open({str(common[1])!r}, {str(common[3])!r}, {str(common[5])!r})
train = run.ds.train_frame()
fold = run.folds["fold"].to_numpy()
for m in ("fasttext", "tfidf"):
    for f in range(run.k):
        load_model(run.paths.models(m) / f"fold{{f}}").predict(train[fold == f]).save({str(tmp)!r} + f"/{{m}}{{f}}.npz")
"""
    fresh_python(code)
    for m in ("fasttext", "tfidf"):
        for f in range(3):
            stored = TopK.load(tmp / "w" / "oof" / "tiny" / m / f"fold{f}.valid.npz")
            assert_same(TopK.load(tmp / f"{m}{f}.npz"), stored)
        meta = json.loads((models / m / "fold0" / "model.json").read_text())
        assert {"prodcat_version", "settings", "data", "classes", "params"} <= set(meta)
        assert not list((models / m).rglob("*.pkl"))  # data, not code


def test_stacker_predicts_identically_after_loading_in_a_fresh_process(trained):
    from prodcat.stacking.stacker import Stacker
    from prodcat.training.run import Run
    from prodcat.training.stack import fit_stacker, stack_params

    common, models, tmp = trained
    run = Run.open(common[1], common[3], common[5])
    stacker, _, _, _ = fit_stacker(run, ["fasttext", "tfidf"], stack_params(run), echo=lambda *a: None)
    stacker.save(tmp / "st")
    frame = run.ds.test_with_photos()
    parts = Predictor.load(models, "stack").fold_predictions(frame)
    for m, folds in parts.items():
        for f, p in enumerate(folds):
            p.save(tmp / f"part_{m}_{f}.npz")
    code = f"""
import pandas as pd
from prodcat.data.dataset import load_dataset
from prodcat.probs import TopK
from prodcat.stacking.stacker import Stacker
ds = load_dataset({str(common[1])!r})
st = Stacker.load(__import__("pathlib").Path({str(tmp / "st")!r}), ds.tree)
parts = {{m: [TopK.load({str(tmp)!r} + f"/part_{{m}}_{{f}}.npz") for f in range(3)] for m in ("fasttext", "tfidf")}}
st.predict(parts, ds.test).save({str(tmp / "stacked.npz")!r})
"""
    fresh_python(code)
    assert_same(stacker.predict(parts, frame), TopK.load(tmp / "stacked.npz"))
    assert Stacker.load(models / "stack", run.ds.tree).meta["models"] == ["fasttext", "tfidf"]


def test_predict_equals_the_all_submission_and_has_the_review_columns(trained):
    common, models, tmp = trained
    tiny = common[1]
    r = invoke("predict", "--input", tiny / "test.parquet", "--out", tmp / "pred.parquet", *common)
    assert r.exit_code == 0, r.output
    pred = pd.read_parquet(tmp / "pred.parquet")
    sub = pd.read_parquet(tmp / "w" / "submissions" / "tiny" / "stack.parquet")
    assert pred["id"].tolist() == sub["id"].tolist()
    assert pred["predicted_category_id"].tolist() == sub["predicted_category_id"].tolist()
    assert {"confidence", "category_path", "top3_category_id", "top3_probability", "needs_review"} <= set(pred)
    assert pred["category_path"].iloc[0].count(" > ") >= 1 and pred["confidence"].between(0, 1).all()
    assert pred["top1_category_id"].tolist() == pred["predicted_category_id"].tolist()
    # --threshold flags exactly the products under it; the Python API gives the same table
    r = invoke("predict", "--input", tiny / "test.parquet", "--out", tmp / "p2.parquet", "--threshold", 0.9, *common)
    p2 = pd.read_parquet(tmp / "p2.parquet")
    assert r.exit_code == 0 and p2["needs_review"].tolist() == (p2["confidence"] < 0.9).tolist()
    assert set(p2["prediction_kind"]) == {"all models"}
    api = Predictor.load(models).predict(pd.read_parquet(tiny / "test.parquet"))
    assert api["predicted_category_id"].tolist() == sub["predicted_category_id"].tolist()


def test_predict_takes_files_without_optional_columns_and_rejects_bad_input(trained):
    common, models, tmp = trained
    new = products(12, seed=7, labels=False, start_id=70000)[["id", "title"]]
    new.to_parquet(tmp / "new.parquet")
    r = invoke("predict", "--input", tmp / "new.parquet", "--out", tmp / "out.parquet", "--models", models)
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp / "out.parquet")) == 12
    new.drop(columns="id").to_parquet(tmp / "noid.parquet")
    r = invoke("predict", "--input", tmp / "noid.parquet", "--out", tmp / "x.parquet", "--models", models)
    assert r.exit_code == 1 and "noid.parquet, column 'id': missing column" in r.output
    assert "Traceback" not in r.output and not (tmp / "x.parquet").exists()
    r = invoke("predict", "--input", tmp / "new.parquet", "--out", tmp / "x.parquet", "--models", tmp / "nowhere")
    assert r.exit_code == 1 and "no saved models here" in r.output
    r = invoke("predict", "--input", tmp / "new.parquet", "--out", tmp / "x.parquet", "--models", models,
               "--model", "image")
    assert r.exit_code == 1 and "model 'image' has no saved fold models" in r.output


def test_a_new_test_file_is_predicted_again_and_a_changed_title_retrains(trained):
    common, models, tmp = trained
    tiny = common[1]
    before = {p: p.stat().st_mtime_ns for p in models.rglob("*")}
    other = products(40, seed=11, labels=False, start_id=60000)  # new ids, new products
    other.to_parquet(tiny / "test.parquet", index=False)
    r = invoke("all", *common)
    assert r.exit_code == 0, r.output
    assert "trained in" not in r.output and r.output.count("finished earlier, reused") == 6
    assert {p: p.stat().st_mtime_ns for p in models.rglob("*")} == before  # nothing retrained
    sub = pd.read_parquet(tmp / "w" / "submissions" / "tiny" / "stack.parquet")
    assert sub["id"].tolist() == other["id"].tolist()
    api = Predictor.load(models).predict(other)
    assert api["predicted_category_id"].tolist() == sub["predicted_category_id"].tolist()

    train = pd.read_parquet(tiny / "train.parquet")
    train.loc[5, "title"] = "bread loaf bakery fresh"
    train.to_parquet(tiny / "train.parquet", index=False)
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and r.output.count("trained in") == 3  # the content changed: every fold
    assert (models / "fasttext" / "fold0" / "model.bin").stat().st_mtime_ns != before[
        models / "fasttext" / "fold0" / "model.bin"]


def test_force_retrains_and_predicts_the_same(trained):
    """--force refits the fold (its saved model is rewritten); TF-IDF is deterministic, so the new fold
    model predicts its held-out rows exactly as the old one did."""
    common, models, tmp = trained
    saved = models / "tfidf" / "fold1" / "classifier.npz"
    mtime = saved.stat().st_mtime_ns
    oof = tmp / "w" / "oof" / "tiny" / "tfidf" / "fold1.valid.npz"
    before = TopK.load(oof)
    r = invoke("train", "tfidf", "--fold", "1", "--force", *common)
    assert r.exit_code == 0 and "fold 1: trained" in r.output
    assert saved.stat().st_mtime_ns != mtime
    assert_same(TopK.load(oof), before)


def test_threshold_for_a_precision_holds_on_held_out_rows():
    """Pick the threshold on half of a model's OOF rows; the other half reaches the precision."""
    rng = np.random.default_rng(0)
    n = 40_000
    conf = rng.beta(5, 1.5, n)
    correct = rng.random(n) < conf ** 1.3  # a somewhat over-confident model
    for target in (0.9, 0.95, 0.98):
        t, coverage, prec = pick_threshold(conf[: n // 2], correct[: n // 2], target)
        held = conf[n // 2:] >= t
        assert prec >= target and 0 < coverage < 1
        assert correct[n // 2:][held].mean() >= target - 0.005, target
        assert abs(held.mean() - coverage) < 0.02
    assert pick_threshold(conf, np.zeros(n, bool), 0.9)[0] == float("inf")  # unreachable: accept nothing


def test_submit_names_stay_in_their_folder(trained):
    common, models, tmp = trained
    r = invoke("submit", "--name", "../../x", *common)
    assert r.exit_code == 1 and "bare file name" in r.output
    assert not (tmp / "w" / "x.parquet").exists()
    r = invoke("submit", "--name", "my.parquet", "--model", "average", *common)
    assert r.exit_code == 0, r.output
    assert (tmp / "w" / "submissions" / "tiny" / "my.parquet").exists()


def test_min_precision_prints_the_expected_coverage(trained):
    common, models, tmp = trained
    r = invoke("predict", "--input", common[1] / "test.parquet", "--out", tmp / "p.parquet",
               "--min-precision", 0.9, *common)
    assert r.exit_code == 0, r.output
    assert "products predicted with all models: threshold" in r.output
    assert "for precision >= 0.9 (expected coverage" in r.output
    line = next(ln for ln in r.output.splitlines() if "need review" in ln)
    flagged = int(line.split(";")[1].split()[0])
    assert flagged == int(pd.read_parquet(tmp / "p.parquet")["needs_review"].sum())
