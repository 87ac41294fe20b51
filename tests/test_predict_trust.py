"""Results you can trust: a stale stacker is refused, damaged model files are named, flags are checked at the
edge, products without usable text are listed, stored fold counts are reported, training ids are noted,
and the review threshold of a product comes from OOF predictions of its own kind (with or without the
listing-order model)."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import products, write_dataset

from prodcat.cli import main
from prodcat.predict import Predictor


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_stacker_whose_base_models_were_retrained_is_refused_until_refitted(trained):
    common, models, tmp = trained
    test = common[1] / "test.parquet"
    r = invoke("train", "tfidf", "--force", *common, "--set", "models.tfidf.text.fields=[short_description]")
    assert r.exit_code == 0, r.output
    with pytest.warns(UserWarning, match="the stacker's scores are left out: it was fitted on other tfidf"):
        scores = invoke("scores", *common)
    assert scores.exit_code == 0
    assert not any(line.startswith(("   stack", "stack ")) for line in scores.output.splitlines())
    for args in (["submit", *common], ["predict", "--input", test, "--out", tmp / "p.parquet", *common]):
        r = invoke(*args)
        assert r.exit_code == 1 and "fitted on other tfidf fold models" in r.output, r.output
        assert "./run.sh stack" in r.output and "Traceback" not in r.output
    assert not (tmp / "p.parquet").exists()
    with pytest.raises(Exception, match="fitted on other tfidf"):
        Predictor.load(models).predict(pd.read_parquet(test))
    r = invoke("stack", *common, "--set", "models.tfidf.text.fields=[short_description]")
    assert r.exit_code == 0 and "reused" not in r.output, r.output  # new inputs: refitted, not reused
    r = invoke("predict", "--input", test, "--out", tmp / "p.parquet", *common)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("damage", ["half", "100 bytes", "same size"])
def test_a_damaged_model_file_is_named_before_anything_loads(trained, damage):
    common, models, tmp = trained
    path = models / "fasttext" / "fold1" / "model.bin"
    data = path.read_bytes()
    if damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "100 bytes":
        path.write_bytes(data[:100])
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    r = invoke("predict", "--input", common[1] / "test.parquet", "--out", tmp / "p.parquet", *common)
    assert r.exit_code == 1 and f"{path}: damaged or incomplete model file" in r.output, r.output
    assert ("SHA-256" in r.output) == (damage == "same size") and "Traceback" not in r.output
    r = invoke("all", *common)  # training sees the damaged fold as unfinished and retrains it
    assert r.exit_code == 0 and "[fasttext] fold 1: trained" in r.output, r.output


def test_a_damaged_stacker_file_is_named(trained):
    common, models, tmp = trained
    ranker = models / "stack" / "ranker0.txt"
    ranker.write_text(ranker.read_text()[:200])
    r = invoke("submit", *common)
    assert r.exit_code == 1 and f"{ranker}: damaged or incomplete model file" in r.output, r.output


def test_flags_out_of_their_range_are_bad_usage(trained):
    common, models, tmp = trained
    base = ["predict", "--input", common[1] / "test.parquet", "--out", tmp / "p.parquet", *common]
    cases = {("--top", 0): "0 is not in the range x>=1",
             ("--threshold", 1.5): "--threshold: 1.5 must be between 0 and 1",
             ("--threshold", -0.5): "--threshold: -0.5 must be between 0 and 1",
             ("--min-precision", 1.0): "--min-precision: 1.0 must be between 0 and 1, both excluded",
             ("--min-precision", 0): "--min-precision: 0.0 must be between 0 and 1, both excluded",
             ("--top", 10000): "--top 10000: the saved models keep 20 classes per product; give --top 20 or less"}
    for (flag, value), message in cases.items():
        r = invoke(*base, flag, value)
        assert r.exit_code == 2 and message in r.output, (flag, value, r.output)
    r = invoke(*base, "--threshold", 0.5, "--min-precision", 0.9)
    assert r.exit_code == 2 and "not both" in r.output
    assert not (tmp / "p.parquet").exists()
    r = invoke(*base, "--top", 20)
    assert r.exit_code == 0 and "top20_category_id" in pd.read_parquet(tmp / "p.parquet")


def test_products_with_no_usable_text_are_listed(tmp_path, tiny_config):
    train = products(120)
    train.loc[3, ["title", "short_description", "name_value_characteristics"]] = ["😀🎉", None, None]
    train.loc[7, ["title", "short_description", "name_value_characteristics"]] = ["\x00\x00", "  ", "<b></b>"]
    data = write_dataset(tmp_path / "d", train=train)
    common = ["--data", data, "--config", tiny_config, "--workdir", tmp_path / "w"]
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and "2 training products have no usable text" in r.output, r.output
    listed = pd.read_csv(tmp_path / "w" / "reports" / "d" / "empty_products_train.csv")
    assert sorted(listed["id"]) == sorted(train["id"].iloc[[3, 7]])
    new = products(5, labels=False, start_id=50_000)
    new.loc[1, ["title", "short_description", "name_value_characteristics"]] = ["\x00🙂", None, None]
    new.to_parquet(tmp_path / "new.parquet")
    r = invoke("predict", "--input", tmp_path / "new.parquet", "--out", tmp_path / "p.parquet", *common)
    assert r.exit_code == 0 and "1 products to predict have no usable text" in r.output, r.output
    listed = pd.read_csv(tmp_path / "p.empty_products.csv")  # beside the output, named for it
    assert listed["id"].tolist() == [50_001]
    (tmp_path / "other").mkdir()  # another input of the same file name: its own report, the first one kept
    new.iloc[[1, 1]].assign(id=[60_000, 60_001]).to_parquet(tmp_path / "other" / "new.parquet")
    r = invoke("predict", "--input", tmp_path / "other" / "new.parquet", "--out", tmp_path / "other" / "p.parquet",
               *common)
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "other" / "p.empty_products.csv")["id"].tolist() == [60_000, 60_001]
    assert pd.read_csv(tmp_path / "p.empty_products.csv")["id"].tolist() == [50_001]
    assert not (tmp_path / "w" / "reports" / "d" / "empty_products_new.csv").exists()


def test_scores_report_the_stored_fold_count_and_predict_notes_training_ids(trained):
    common, models, tmp = trained
    r = invoke("scores", *common, "--set", "folds.k=5")
    assert r.exit_code == 0 and "(120 products, 3 folds)" in r.output, r.output
    seen = pd.read_parquet(common[1] / "train.parquet").drop(columns="category_id").head(4)
    seen.to_parquet(tmp / "seen.parquet")
    r = invoke("predict", "--input", tmp / "seen.parquet", "--out", tmp / "p.parquet", *common)
    assert r.exit_code == 0 and "4 products to predict have training ids" in r.output, r.output
    r = invoke("predict", "--input", common[1] / "test.parquet", "--out", tmp / "p.parquet", *common)
    assert r.exit_code == 0 and "training ids" not in r.output


@pytest.fixture
def listed(tmp_path, tiny_config):
    """A dataset whose ids carry the listing order (consecutive ids share a leaf), trained with
    fastText + TF-IDF + id_neighbours + the stacker."""
    train = products(240).sort_values("category_id", kind="stable")
    train["id"] = np.arange(1000, 1000 + 2 * len(train), 2)  # ids in listing order, gaps for the test
    test = products(40, seed=1, labels=False)
    test["id"] = np.arange(1001, 1001 + 2 * len(test), 2)
    data = write_dataset(tmp_path / "listed", train=train.reset_index(drop=True), test=test)
    cfg = tmp_path / "listed.yaml"
    cfg.write_text(tiny_config.read_text().replace("pipeline: [fasttext]",
                                                   "pipeline: [fasttext, tfidf, id_neighbours]"))
    common = ["--data", data, "--config", cfg, "--workdir", tmp_path / "w"]
    r = invoke("all", *common)
    assert r.exit_code == 0 and "[id_neighbours] skipped" not in r.output, r.output
    return common, tmp_path / "w" / "models" / "listed", tmp_path


def test_the_review_threshold_of_a_product_comes_from_its_own_kind_of_prediction(listed):
    common, models, tmp = listed
    new = products(30, seed=5, labels=False, start_id=10**9)  # tomorrow's products: ids past every training id
    old = pd.read_parquet(common[1] / "test.parquet").head(30)  # between training ids
    pd.concat([new, old]).to_parquet(tmp / "mixed.parquet")
    r = invoke("predict", "--input", tmp / "mixed.parquet", "--out", tmp / "p.parquet", "--min-precision", 0.9, *common)
    assert r.exit_code == 0, r.output
    assert "30 products predicted with all models: threshold" in r.output
    assert "30 products predicted with without id_neighbours: threshold" in r.output
    pred = pd.read_parquet(tmp / "p.parquet")
    assert pred["prediction_kind"].tolist() == ["without id_neighbours"] * 30 + ["all models"] * 30
    predictor = Predictor.load(models)
    thresholds = {kind: t for kind, (t, _, _) in predictor.thresholds_for(0.9).items()}
    with np.load(models / "stack" / "oof_confidence_without_id_neighbours.npz") as z:
        assert len(z["confidence"]) == 240  # every training product, scored as if the model were silent
    want = pred["confidence"] < pred["prediction_kind"].map(thresholds)
    assert pred["needs_review"].tolist() == want.tolist()
    r = invoke("scores", *common)
    assert r.exit_code == 0 and "stack without id_neighbours" in r.output, r.output
    review = r.output.split("Review:")[1]
    assert "stack without id_neighbours" in review
    info = json.loads((tmp / "w" / "oof" / "listed" / "stack" / "stack.json").read_text())
    assert "id_neighbours" in info["oof_hF1_without"]


def test_the_predictor_validates_a_frame_as_a_file_is_validated(trained):
    from prodcat.errors import DataError

    common, models, tmp = trained
    predictor = Predictor.load(models)
    frame = products(6, labels=False, start_id=80_000)
    with pytest.raises(DataError, match=r"products, column 'rating': wrong dtype \w+: expected numbers"):
        predictor.predict(frame.assign(rating=["good"] * 6))
    with pytest.raises(DataError, match="products, column 'id': duplicate ids"):
        predictor.predict(pd.concat([frame, frame.head(1)]))
    with pytest.raises(DataError, match="products, column 'id': missing column"):
        predictor.predict(frame.drop(columns="id"))
    only_ids = predictor.predict(frame[["id", "title"]])  # optional columns may be absent, as in a file
    assert only_ids["id"].tolist() == frame["id"].tolist()
