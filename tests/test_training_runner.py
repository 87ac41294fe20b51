"""End to end through the CLI on a tiny dataset: folds, fastText per fold, resume, scores, submission."""
import json
import os
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from conftest import REPO, products, write_dataset

from prodcat.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_fasttext_fold_resume_scores_submit(tiny, tiny_config, tmp_path):
    common = ["--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w"]
    r = invoke("folds", *common)
    assert r.exit_code == 0 and "120 products in 3 folds" in r.output

    r = invoke("train", "fasttext", "--fold", "1", *common)
    assert r.exit_code == 0 and "fold 1: trained" in r.output and "not all folds finished" in r.output
    oof = tmp_path / "w" / "oof" / "tiny" / "fasttext"
    assert (oof / "fold1.json").exists() and not (oof / "oof.npz").exists()

    fold1 = (oof / "fold1.json").read_bytes()
    model1 = tmp_path / "w" / "models" / "tiny" / "fasttext" / "fold1" / "model.bin"
    mtime1 = model1.stat().st_mtime_ns
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and "all folds finished" in r.output
    assert (oof / "fold1.json").read_bytes() == fold1 and model1.stat().st_mtime_ns == mtime1  # reused
    assert (oof / "oof.npz").exists() and len(list(oof.glob("fold*.json"))) == 3

    fold2 = json.loads((oof / "fold2.json").read_text())
    model2 = tmp_path / "w" / "models" / "tiny" / "fasttext" / "fold2" / "model.bin"
    mtime2 = model2.stat().st_mtime_ns
    r = invoke("train", "fasttext", "--fold", "2", "--force", *common)
    assert r.exit_code == 0 and model2.stat().st_mtime_ns != mtime2  # --force refits the fold model
    assert json.loads((oof / "fold2.json").read_text())["settings"] == fold2["settings"]

    r = invoke("scores", *common)
    assert r.exit_code == 0 and "fasttext" in r.output
    row = next(line for line in r.output.splitlines() if line.split()[:1] == ["fasttext"])
    hf1 = float(row.split()[1])
    assert hf1 > 0.9  # the tiny classes are separable by their words

    r = invoke("submit", *common)
    assert r.exit_code == 0
    sub = pd.read_parquet(tmp_path / "w" / "submissions" / "tiny" / "fasttext.parquet")
    assert list(sub.columns) == ["id", "predicted_category_id"] and len(sub) == 30
    assert set(sub["predicted_category_id"]) <= {11, 12, 21, 23, 24}


def test_changed_settings_retrain_instead_of_reuse(tiny, tiny_config, tmp_path):
    common = ["--data", tiny, "--workdir", tmp_path / "w"]
    assert invoke("train", "fasttext", "--fold", "0", "--config", tiny_config, *common).exit_code == 0
    meta = tmp_path / "w" / "oof" / "tiny" / "fasttext" / "fold0.json"
    before = json.loads(meta.read_text())["settings"]
    other = tmp_path / "other.yaml"
    other.write_text(f"extends: {tiny_config}\nmodels:\n  fasttext:\n    dim: 8\n")
    r = invoke("train", "fasttext", "--fold", "0", "--config", other, *common)
    assert r.exit_code == 0 and json.loads(meta.read_text())["settings"] != before  # retrained


def test_all_runs_pipeline_and_prints_table(tiny, tiny_config, tmp_path):
    r = invoke("all", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w")
    assert r.exit_code == 0, r.output
    assert "OOF scores on tiny" in r.output and "submission" in r.output
    assert (tmp_path / "w" / "folds" / "tiny" / "folds.parquet").exists()


def test_bad_data_is_one_clear_message(tmp_path, tiny_config):
    train = products(30)
    train.loc[[4, 9], "category_id"] = 22  # inner node, not a leaf
    root = write_dataset(tmp_path / "bad", train=train)
    r = CliRunner().invoke(main, ["folds", "--data", str(root), "--config", str(tiny_config)])
    assert r.exit_code == 1
    assert "Error:" in r.output and "train.parquet, column 'category_id'" in r.output and "rows 4, 9" in r.output
    assert "Traceback" not in r.output


def test_unknown_model_and_fold(tiny, tiny_config, tmp_path):
    r = CliRunner().invoke(main, ["train", "nope", "--data", str(tiny), "--config", str(tiny_config)])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.output
    r = CliRunner().invoke(main, ["train", "fasttext", "--fold", "7", "--data", str(tiny), "--config",
                                  str(tiny_config), "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "--fold must be between 0 and 2" in r.output


def test_only_rank_zero_writes_under_ddp(tiny, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning sets in the extra processes of a DDP run
    r = invoke("train", "fasttext", "--fold", "0", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "oof" / "tiny" / "fasttext" / "fold0.json").exists()


def test_config_variant_of_a_model_has_its_own_outputs(tiny, tiny_config, tmp_path):
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"extends: {tiny_config}\nmodels:\n  ft_small:\n    model: fasttext\n    dim: 8\n"
                       "    epoch: 5\n")
    common = ["--data", tiny, "--config", variant, "--workdir", tmp_path / "w"]
    r = invoke("train", "ft_small", *common)
    assert r.exit_code == 0 and "[ft_small] all folds finished" in r.output, r.output
    assert (tmp_path / "w" / "oof" / "tiny" / "ft_small" / "oof.npz").exists()
    assert not (tmp_path / "w" / "oof" / "tiny" / "fasttext").exists()
    assert "ft_small" in invoke("scores", *common).output


def test_paths_are_relative_to_the_callers_directory(tiny, tmp_path):
    """run.sh changes into the repository; --data and --workdir still mean what the user typed."""
    import shutil
    import subprocess

    from conftest import REPO

    shutil.copytree(tiny, tmp_path / "here" / "mydata")
    done = subprocess.run([str(REPO / "run.sh"), "folds", "--data", "mydata", "--workdir", "out"],
                          cwd=tmp_path / "here", capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "here" / "out" / "folds" / "mydata" / "folds.parquet").exists()
    done = subprocess.run([str(REPO / "run.sh"), "folds", "--data", "nowhere"], cwd=tmp_path / "here",
                          capture_output=True, text=True)
    assert done.returncode == 1 and f"{tmp_path / 'here' / 'nowhere'}: dataset folder not found" in done.stderr


def test_unexpected_failures_are_one_line_and_debug_shows_the_traceback(tiny, tiny_config, tmp_path, monkeypatch):
    import prodcat.training.runner as runner

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "_train_fold", boom)
    args = ["train", "tfidf", "--data", str(tiny), "--config", str(tiny_config), "--workdir", str(tmp_path / "w")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "unexpected failure: RuntimeError: boom (rerun with --debug" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, args + ["--debug"])
    assert isinstance(r.exception, RuntimeError)  # --debug: the exception itself, with its traceback


def test_a_model_the_data_cannot_support_is_skipped_with_its_reason_only(tiny, tiny_config, tmp_path):
    r = invoke("train", "image", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w")
    assert r.exit_code == 0 and "[image] skipped: no product of the training rows has a photo" in r.output
    assert "not all folds finished" not in r.output


def test_a_fasttext_training_failure_is_one_message(tmp_path):
    import pytest
    from conftest import products

    from prodcat.errors import DataError
    from prodcat.models.base import ModelEnv
    from prodcat.models.fasttext import FastTextModel
    from prodcat.settings import TextSettings, defaults_of

    model = FastTextModel({"epoch": 1}, ModelEnv(text=defaults_of(TextSettings)))
    model.params["loss"] = "unknown"  # past the settings check: what fastText itself refuses
    with pytest.raises(DataError, match="fastText could not train on these rows: Unrecognized loss name"):
        model.fit(products(30), tmp_path / "m")
    assert not list((tmp_path / "m").iterdir())  # its training file is removed


def test_a_training_killed_with_sigterm_leaves_no_temp_file_for_good(tmp_path):
    """fastText's training text is a scratch file named with its process id: killed (SIGTERM: no clean-up
    runs), the next training's clean-up removes it; a live process's one is kept."""
    import signal
    import subprocess
    import sys

    from prodcat.storage import clean_stale_temps

    code = ("import sys, time; from prodcat.storage import scratch_file\n"
            "with scratch_file(sys.argv[1], 'train.txt') as f:\n"
            "    f.write_text('x'); print(f, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "fold4")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    left = Path(proc.stdout.readline().strip())
    assert left.exists() and clean_stale_temps(tmp_path) == 0  # its writer is alive: kept
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert left.exists() and clean_stale_temps(tmp_path) == 1 and not left.exists()


def test_train_only_products_fit_every_child_but_are_never_held_out(tmp_path, tiny_config):
    """`train_only`: more labelled products fit each fold's child (a class only they have is predicted for the
    test products), but the folds, the OOF and the stacker hold train.parquet's products only; a model is
    retrained when the products it is given change (`train_only.models`), not when another's do."""
    import numpy as np

    train = products(90)
    train = train[train["category_id"] != 24]  # 'dog wet can' is known from the train-only products alone
    root = write_dataset(tmp_path / "d", train=train)
    products(60, seed=3, start_id=50_000).to_parquet(root / "more.parquet", index=False)
    config = tmp_path / "only.yaml"
    config.write_text(f"extends: {tiny_config}\ntrain_only: {{file: more.parquet, rows: 40}}\n")
    common = ["--data", root, "--config", config, "--workdir", tmp_path / "w"]
    r = invoke("all", *common)
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "w" / "folds" / "d" / "folds.parquet")) == len(train)
    with np.load(tmp_path / "w" / "oof" / "d" / "fasttext" / "oof.npz") as z:
        assert sorted(z["ids"].tolist()) == sorted(train["id"].tolist())
    with np.load(tmp_path / "w" / "models" / "d" / "train_ids.npz") as z:
        assert len(z["ids"]) == len(train) + 40 and (z["ids"] >= 50_000).sum() == 40
    sub = pd.read_parquet(tmp_path / "w" / "submissions" / "d" / "stack.parquet")
    test = pd.read_parquet(root / "test.parquet").merge(sub, on="id")
    assert (test.loc[test["title"].str.startswith("dog wet can"), "predicted_category_id"] == 24).all()
    config.write_text(f"extends: {tiny_config}\ntrain_only:\n  file: more.parquet\n  rows: 30\n"
                      "  models: {fasttext: 40}\n")
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and "finished earlier, reused" in r.output  # the model's own 40: unchanged
    config.write_text(f"extends: {tiny_config}\ntrain_only:\n  file: more.parquet\n  rows: 40\n"
                      "  models: {fasttext: 30}\n")
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and "finished earlier, reused" not in r.output  # other products: retrained


def test_a_model_fitted_once_on_the_train_only_products_predicts_training_products_out_of_sample(tmp_path,
                                                                                                 tiny_config):
    """`train_only.once`: one child fitted on the train-only products alone (never on train.parquet's) gives
    the OOF of every training product and predicts new products with the fold use; `refit` fits its full child
    on the train-only and the training products together; reused while unchanged; the stacker's lookup priors
    count them too. `train_only.holdout`: the end of the seeded draw is never given to any model."""
    import numpy as np

    from prodcat.models.bag import Bag

    train = products(90)
    root = write_dataset(tmp_path / "d", train=train)
    products(60, seed=3, start_id=50_000).to_parquet(root / "more.parquet", index=False)
    config = tmp_path / "once.yaml"
    config.write_text(f"extends: {tiny_config}\npipeline: [fasttext, tfidf]\nstack: {{priors: [word1]}}\n"
                      "train_only: {file: more.parquet, holdout: 10, once: [fasttext]}\n")
    common = ["--data", root, "--config", config, "--workdir", tmp_path / "w"]
    r = invoke("all", *common, "--refit")
    assert r.exit_code == 0, r.output
    assert "fitted once on 50 train-only products" in r.output
    assert "lookup priors counted on 90 training and 50 train-only products" in r.output  # the held-out 10: never
    models = tmp_path / "w" / "models" / "d"
    bag = Bag("fasttext", models / "fasttext")
    assert bag.once and bag.has_full() and not (models / "fasttext" / "fold0").exists()
    assert "[fasttext] full: trained on 140 products" in r.output  # 50 train-only + 90 training products
    assert len(bag.children("folds")) == len(bag.children("full")) == 1
    assert bag.children("folds")[0] is not bag.children("full")[0]
    with np.load(tmp_path / "w" / "oof" / "d" / "fasttext" / "oof.npz") as z:
        assert sorted(z["ids"].tolist()) == sorted(train["id"].tolist())
    with np.load(models / "train_ids.npz") as z:
        assert len(z["ids"]) == len(train) + 50  # 10 held out: no model was given them
    for use in ("folds", "full"):
        r = invoke("predict", "--models", models, "--input", root / "test.parquet",
                   "--out", tmp_path / f"{use}.parquet", "--use", use)
        assert r.exit_code == 0, r.output
    r = invoke("train", "fasttext", *common)
    assert r.exit_code == 0 and "fitted once earlier, reused" in r.output
    r = invoke("refit", "fasttext", *common)
    assert r.exit_code == 0 and "full: finished earlier, reused" in r.output and bag.has_full()
