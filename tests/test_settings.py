"""Typed settings: every key declared once; unknown keys, wrong types and ranges fail before any work with a
message naming the file, the key and the closest valid key; size rules; --set; the config command."""
import pytest
from click.testing import CliRunner
from conftest import REPO

from prodcat.cli import main
from prodcat.errors import DataError
from prodcat.settings import LARGE, MODEL_SPECS, RunSettings, config_hash, defaults_of, load_layers, parse_sets, resolve

DEFAULT = REPO / "configs" / "default.yaml"


def resolve_raw(raw: dict, n=None):
    return resolve([("my.yaml", raw)], n)


@pytest.mark.parametrize("raw, message", [
    ({"models": {"fasttext": {"epochs": 3}}}, "my.yaml: models.fasttext.epochs: unknown key; did you mean 'epoch'?"),
    ({"stack": {"candidate": 3}}, "my.yaml: stack.candidate: unknown key; did you mean 'candidates'?"),
    ({"models": {"tfidf": {"shortlst": 30}}}, "models.tfidf.shortlst: unknown key; did you mean 'shortlist'?"),
    ({"text": {"lemmatise": True}}, "text.lemmatise: unknown key; did you mean 'lemmatize'?"),
    ({"sead": 1}, "my.yaml: sead: unknown key; did you mean 'seed'?"),
    ({"models": {"image": {"head": {"hiden": 3}}}}, "models.image.head.hiden: unknown key; did you mean 'hidden'?"),
    ({"models": {"fasttext": {"epoch": "ten"}}}, "models.fasttext.epoch: expected int, got 'ten' (str)"),
    ({"models": {"fasttext": {"epoch": 0}}}, "models.fasttext.epoch: 0 is below the minimum 1"),
    ({"models": {"coca": {"image_dropout": 1.5}}}, "models.coca.image_dropout: 1.5 is above the maximum 1.0"),
    ({"stack": {"decoding": "argmx"}}, "stack.decoding: 'argmx' is not allowed (allowed: expected_hf1, argmax)"),
    ({"models": {"fasttext": {"thread": "all"}}}, "models.fasttext.thread: 'all' is not allowed (allowed: auto)"),
    ({"text": {"fields": ["title", "brand"]}}, "text.fields: 'brand' is not allowed"),
    ({"folds": {"k": True}}, "folds.k: expected int, got True (bool)"),
    # a string is not a list because the declared type's name contains `str` (each kind of declared type)
    ({"text": {"fields": "title"}}, "text.fields: expected a list of str, got 'title' (str)"),
    ({"stack": {"priors": "word1"}}, "stack.priors: expected a list of str, got 'word1' (str)"),
    ({"models": {"tfidf": {"word_ngrams": 2}}}, "models.tfidf.word_ngrams: expected a list of int, got 2 (int)"),
    ({"models": {"tfidf": {"word_ngrams": [1, "2"]}}}, "models.tfidf.word_ngrams: expected a list of int"),
    ({"stack": {"models": "tfidf"}}, "stack.models: expected a list of str or null, got 'tfidf' (str)"),
    ({"stack": {"hide": ["id_neighbours"]}}, "stack.hide: expected dict, got ['id_neighbours'] (list)"),
    ({"models": {"fasttext": {"thread": 1.5}}}, "models.fasttext.thread: expected int or str, got 1.5 (float)"),
    ({"models": {"fasttext": {"lr": "fast"}}}, "models.fasttext.lr: expected float, got 'fast' (str)"),
    ({"text": {"lemmatize": "yes"}}, "text.lemmatize: expected bool, got 'yes' (str)"),
    ({"text": 3}, "text: expected a mapping of settings, got 3"),
    ({"pipeline": ["fasttext", "tfdf"]}, "my.yaml: pipeline: unknown model 'tfdf'; did you mean 'tfidf'?"),
    ({"train_only": {"models": {"knm": 5}}}, "my.yaml: train_only.models.knm: unknown model; did you mean 'knn'?"),
    ({"train_only": {"models": {"knn": 0}}}, "train_only.models.knn: 0 is below the minimum 1"),
    ({"train_only": {"models": {"knn": "all"}}}, "train_only.models.knn: expected a number, got 'all'"),
    ({"models": {"fastext": {"dim": 3}}}, "models.fastext: unknown model (a variant needs `model: BASE`); "
                                           "did you mean 'fasttext'?"),
    ({"models": {"v": {"model": "fasttxt"}}}, "models.v.model: unknown base model 'fasttxt'; did you mean"),
    ({"models": {"v": {"model": "fasttext", "epochs": 1}}}, "models.v.epochs: unknown key; did you mean 'epoch'?"),
])
def test_bad_settings_name_the_file_the_key_and_the_fix(raw, message):
    from prodcat.errors import SettingsError

    with pytest.raises(SettingsError) as err:  # a DataError of its own kind (a service maps it to a status)
        resolve_raw(raw)
    assert message in str(err.value) and isinstance(err.value, DataError)


def test_every_key_of_the_shipped_configs_is_declared():
    for name in ("default.yaml", "uhtt.yaml", "gpu.yaml"):
        resolved = resolve(load_layers(REPO / "configs" / name), 1000)
        assert resolved.values["models"]["fasttext"]["epoch"] >= 1


def test_an_explicit_default_does_not_change_the_settings_hash():
    plain = resolve_raw({})
    explicit = resolve_raw({"models": {"fasttext": {"epoch": 100, "dim": 50}}, "stack": {"candidates": 10}})
    assert plain.values == explicit.values
    assert config_hash(plain.values["models"]["fasttext"]) == config_hash(explicit.values["models"]["fasttext"])
    other = resolve_raw({"models": {"fasttext": {"epoch": 99}}})
    assert config_hash(other.values["models"]["fasttext"]) != config_hash(plain.values["models"]["fasttext"])


def test_size_rules_apply_under_files_and_over_defaults():
    small = resolve_raw({}, n=800)
    assert small.values["models"]["fasttext"]["epoch"] == defaults_of(MODEL_SPECS["fasttext"].settings)["epoch"]
    big = resolve_raw({}, n=LARGE)
    assert big.values["models"]["fasttext"]["epoch"] == 5 and big.values["stack"]["priors"]
    assert big.sources["models.fasttext.epoch"] == "size rule" and "283" not in big.note
    mine = resolve_raw({"models": {"fasttext": {"epoch": 7}}}, n=LARGE)  # a file wins over the rule
    assert mine.values["models"]["fasttext"]["epoch"] == 7 and mine.sources["models.fasttext.epoch"] == "my.yaml"


def test_variants_take_their_base_settings_then_their_own():
    r = resolve_raw({"models": {"fasttext": {"dim": 20}, "ft_hs": {"model": "fasttext", "loss": "hs"}},
                     "pipeline": ["fasttext", "ft_hs"]})
    assert r.values["models"]["ft_hs"] == r.values["models"]["fasttext"] | {"model": "fasttext", "loss": "hs"}


def test_set_overrides_are_parsed_and_checked():
    assert parse_sets(["models.fasttext.epoch=10", "stack.priors=[word1]"]) == {
        "models": {"fasttext": {"epoch": 10}}, "stack": {"priors": ["word1"]}}
    with pytest.raises(DataError, match="expected KEY.PATH=VALUE"):
        parse_sets(["models.fasttext.epoch"])
    r = resolve(load_layers(DEFAULT) + [("--set", parse_sets(["models.fasttext.epoch=10"]))])
    assert r.values["models"]["fasttext"]["epoch"] == 10 and r.sources["models.fasttext.epoch"] == "--set"


def test_declared_defaults_have_docs():
    from dataclasses import fields

    from prodcat.settings import ServeSettings, StackSettings, TextSettings

    schemas = (RunSettings, TextSettings, StackSettings, ServeSettings, *(s.settings for s in MODEL_SPECS.values()))
    for schema in schemas:
        for f in fields(schema):
            assert f.metadata.get("doc"), f"{schema.__name__}.{f.name} has no doc"


def test_a_misspelled_key_fails_before_any_work(tiny, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"extends: {DEFAULT}\nmodels:\n  fasttext:\n    epochs: 3\n")
    r = CliRunner().invoke(main, ["all", "--data", str(tiny), "--config", str(cfg), "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 1 and "bad.yaml: models.fasttext.epochs: unknown key; did you mean 'epoch'?" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "w").exists()  # nothing started
    r = CliRunner().invoke(main, ["train", "fasttext", "--data", str(tiny), "--set", "models.tfidf.lr=-1",
                                  "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 1 and "--set: models.tfidf.lr: -1 is below the minimum 0.0" in r.output


def test_config_command_prints_every_setting_and_its_source(tiny):
    r = CliRunner().invoke(main, ["config", "--data", str(tiny), "--set", "models.tfidf.epochs=3"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln and not ln.startswith("#")}
    assert lines["models.tfidf.epochs"].rstrip().endswith("# --set")
    assert lines["models.fasttext.epoch"].rstrip().endswith("# default")
    assert lines["pipeline"].rstrip().endswith("default.yaml")
    assert lines["data"].rstrip().endswith("# --data")
    assert lines["serve.max_batch_items"].split()[1] == "1000" and lines["serve.host"].split()[1] == "'127.0.0.1'"
    assert "size rule: 120 training products" in r.output


def test_set_paths_mean_what_the_user_typed_relative_to_the_callers_directory(tmp_path, monkeypatch):
    """`--set review.reviewers_file=reviewers.txt` from another directory: run.sh changes into the repository,
    the path stays the caller's; absolute paths, non-path settings and unset callers are left alone."""
    from prodcat.settings import parse_sets, path_settings

    assert {"data", "workdir", "serve.api_key_file", "review.reviewers_file"} <= set(path_settings())
    monkeypatch.setenv("PRODCAT_CALLER_DIR", str(tmp_path))
    sets = parse_sets(["review.reviewers_file=reviewers.txt", "serve.api_key_file=/etc/key",
                       "serve.port=9000", "data=../d"])
    assert sets["review"]["reviewers_file"] == str(tmp_path / "reviewers.txt")
    assert sets["serve"] == {"api_key_file": "/etc/key", "port": 9000} and sets["data"] == str(tmp_path / "../d")
    monkeypatch.delenv("PRODCAT_CALLER_DIR")
    assert parse_sets(["review.reviewers_file=reviewers.txt"])["review"]["reviewers_file"] == "reviewers.txt"


def test_the_review_rule_is_checked_once_before_any_work(tiny, tmp_path):
    """`review add --set review.min_precision=1.0` fails at once on the setting it names (not on a flag the
    user never gave, after embedding every photo); the rule object is what every caller builds."""
    from prodcat.errors import SettingsError, UsageError
    from prodcat.review_rule import ReviewRule

    r = CliRunner().invoke(main, ["review", "add", "--input", str(tiny / "test.parquet"), "--data", str(tiny),
                                  "--workdir", str(tmp_path / "w"), "--set", "review.min_precision=1.0"])
    assert r.exit_code == 1 and "review.min_precision: 1.0 must be between 0 and 1, both excluded" in r.output
    assert "--min-precision" not in r.output
    with pytest.raises(UsageError, match="threshold and min_precision: give one of them, not both"):
        ReviewRule(0.5, 0.9)
    with pytest.raises(SettingsError, match="serve.min_precision: 0.0 must be between 0 and 1, both excluded"):
        ReviewRule(None, 0.0, ("serve.threshold", "serve.min_precision"), SettingsError)
    assert ReviewRule(0.0).given and not ReviewRule().given
