"""The bag is a model: one rule for a finished bag, the full child trained on every product (refit), the
fold-or-full choice of predict/submit/Predictor, the fit -> _fit template, settings checked from Python,
bounded thread-safe memos, no import circles and no long functions."""
import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, products

from prodcat.cli import main
from prodcat.errors import SettingsError
from prodcat.memo import BoundedMemo
from prodcat.models.bag import Bag
from prodcat.predict import Predictor
from prodcat.probs import TopK

SRC = REPO / "src" / "prodcat"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fresh_process_predict(folder: Path, frame: pd.DataFrame, tmp_path: Path) -> TopK:
    src, out = tmp_path / "input.parquet", tmp_path / "fresh.npz"
    frame.to_parquet(src, index=False)
    code = ("import sys, pandas as pd; from pathlib import Path; from prodcat.models.base import load_model; "
            "load_model(Path(sys.argv[1])).predict(pd.read_parquet(sys.argv[2])).save(Path(sys.argv[3]))")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(src), str(out)],
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return TopK.load(out)


@pytest.fixture
def refitted(trained):
    common, models, tmp = trained
    r = invoke("refit", *common)
    assert r.exit_code == 0, r.output
    return common, models, tmp, r.output


def test_refit_trains_each_model_once_on_every_product_and_reuses_it(refitted):
    common, models, tmp, output = refitted
    n_train = len(pd.read_parquet(common[1] / "train.parquet"))
    for name in ("fasttext", "tfidf"):
        assert f"[{name}] full: trained on {n_train} products" in output
        bag = Bag(name, models / name)
        assert bag.finished() and bag.has_full()
        assert bag.meta["full"]
    r = invoke("refit", "tfidf", *common)
    assert r.exit_code == 0 and "[tfidf] full: finished earlier, reused" in r.output, r.output
    r = invoke("refit", "tfidf", "--force", *common)
    assert r.exit_code == 0 and "[tfidf] full: trained on" in r.output, r.output


@pytest.mark.parametrize("name", ["fasttext", "tfidf"])
def test_a_full_model_saves_loads_in_a_fresh_process_and_predicts_identically(refitted, name):
    common, models, tmp, _ = refitted
    test = pd.read_parquet(common[1] / "test.parquet")
    here = Bag(name, models / name).predict(test, use="full")
    again = fresh_process_predict(models / name / "full", test, tmp)
    assert np.array_equal(here.labels, again.labels) and np.array_equal(here.scores, again.scores)


def test_id_neighbours_full_model(tmp_path, tiny_config):
    """The listing-order model refits too: its full child knows every training id."""
    from conftest import write_dataset
    from test_models_id_neighbours import listed_in_batches

    train = listed_in_batches(300, seed=7)
    inside = train.sample(40, random_state=0).drop(columns="category_id").assign(id=lambda d: d["id"] * 10 + 5)
    data = write_dataset(tmp_path / "listed", train=train.assign(id=train["id"] * 10), test=inside)
    cfg = tmp_path / "ids.yaml"
    cfg.write_text(tiny_config.read_text().replace("pipeline: [fasttext]", "pipeline: [id_neighbours]"))
    common = ["--data", data, "--config", cfg, "--workdir", tmp_path / "w"]
    for cmd in ("train", "refit"):
        r = invoke(cmd, "id_neighbours", *common)
        assert r.exit_code == 0, r.output
    folder = tmp_path / "w" / "models" / "listed" / "id_neighbours"
    test = pd.read_parquet(data / "test.parquet")
    here = Bag("id_neighbours", folder).predict(test, use="full")
    again = fresh_process_predict(folder / "full", test, tmp_path)
    assert np.array_equal(here.labels, again.labels) and np.array_equal(here.scores, again.scores)
    assert (~here.missing).mean() > 0.5


def test_predict_and_submit_choose_full_or_fold_models(refitted):
    common, models, tmp, _ = refitted
    test = common[1] / "test.parquet"
    out = {}
    for use in ("full", "folds"):
        r = invoke("predict", "--input", test, "--out", tmp / f"{use}.parquet", "--use", use, *common)
        assert r.exit_code == 0 and f"({use} models)" in r.output, r.output
        out[use] = pd.read_parquet(tmp / f"{use}.parquet")
        r = invoke("submit", "--use", use, "--name", use, *common)
        assert r.exit_code == 0, r.output
    assert (out["full"]["id"] == out["folds"]["id"]).all()
    agree = (out["full"]["predicted_category_id"] == out["folds"]["predicted_category_id"]).mean()
    assert agree > 0.9  # the same task learned from (nearly) the same rows
    api = Predictor.load(models, use="full").predict(pd.read_parquet(test))
    pd.testing.assert_frame_equal(api, out["full"])
    assert len(Predictor.load(models, use="full").base("tfidf")) == 1
    assert len(Predictor.load(models, use="folds").base("tfidf")) == 3
    r = invoke("predict", "--input", test, "--out", tmp / "x.parquet", "--use", "half", *common)
    assert r.exit_code == 2 and "'half' is not one of 'full', 'folds'" in r.output


def test_the_stacker_scores_full_models_with_its_full_ranker_alone(refitted):
    """A full ranker, fitted on every product's OOF queries, is saved beside the fold rankers and is the one
    ranker that scores the full models' predictions (the fold rankers score the fold children's)."""
    common, models, tmp, _ = refitted
    assert (models / "stack" / "ranker_full.txt").exists()
    test = pd.read_parquet(common[1] / "test.parquet")
    full, folds = Predictor.load(models, use="full"), Predictor.load(models, use="folds")
    stacker = full.stacker()
    fold_rankers, whole = stacker.sets[None]
    assert whole is not None and len(fold_rankers) == 3

    class Unused:
        def predict(self, x):
            raise AssertionError("a fold ranker scored full predictions")

    expected = full.predict(test)
    stacker.sets[None] = ([Unused()] * 3, whole)
    pd.testing.assert_frame_equal(full.predict(test), expected)
    folds.stacker().sets[None] = (fold_rankers, Unused())
    assert len(folds.predict(test)) == len(test)


def test_full_models_missing_or_stale_are_named(trained):
    common, models, tmp = trained
    test = common[1] / "test.parquet"
    r = invoke("predict", "--input", test, "--out", tmp / "p.parquet", "--use", "full", *common)
    assert r.exit_code == 1 and "no full model" in r.output and "./run.sh refit fasttext" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp / "p.parquet").exists()
    assert invoke("refit", *common).exit_code == 0
    r = invoke("train", "tfidf", "--force", *common, "--set", "models.tfidf.epochs=2")  # new folds: the
    assert r.exit_code == 0, r.output                                               # full child is stale
    bag = Bag("tfidf", models / "tfidf")
    assert bag.finished() and not bag.has_full()
    r = invoke("refit", "tfidf", *common, "--set", "models.tfidf.epochs=2")
    assert r.exit_code == 0 and "[tfidf] full: trained on" in r.output, r.output
    assert Bag("tfidf", models / "tfidf").has_full()


def test_the_one_rule_a_bag_is_finished_until_a_child_changes(trained):
    common, models, tmp = trained
    bag = Bag("fasttext", models / "fasttext")
    assert bag.finished() and bag.k == 3
    meta = models / "fasttext" / "fold2" / "model.json"
    meta.write_text(meta.read_text().replace('"fold": 2', '"fold": 2 '))  # another child than the one joined
    assert not bag.finished()
    assert "fasttext" not in Predictor.load(models, "tfidf").bags
    r = invoke("all", *common)  # the runner asks the same rule: the fold is retrained, the bag recorded again
    assert r.exit_code == 0, r.output
    assert Bag("fasttext", models / "fasttext").finished()


def test_refit_needs_finished_folds(tiny, tiny_config, tmp_path):
    r = invoke("refit", "fasttext", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w")
    assert r.exit_code == 1 and "refit needs the model's finished folds" in r.output, r.output
    r = invoke("refit", "nosuch", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w")
    assert r.exit_code == 2 and "unknown model 'nosuch'" in r.output


def test_all_refit_submits_with_the_full_models(tiny, tiny_config, tmp_path):
    common = ["--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w"]
    r = invoke("all", "--refit", *common)
    assert r.exit_code == 0, r.output
    assert "[fasttext] full: trained on" in r.output
    assert Bag("fasttext", tmp_path / "w" / "models" / "tiny" / "fasttext").has_full()
    assert (tmp_path / "w" / "submissions" / "tiny" / "stack.parquet").exists()


# -- the model contract ---------------------------------------------------------------------------------
def test_fit_returns_a_fitted_copy_and_leaves_the_configured_model_as_it_was(tmp_path):
    from prodcat.models.base import ModelEnv
    from prodcat.models.tfidf import TfidfModel

    train = products(200)
    model = TfidfModel({"epochs": 2}, ModelEnv(text={}))
    fitted = model.fit(train, tmp_path / "f", 0)
    assert fitted is not model and model.clf is None and fitted.clf is not None
    assert fitted.fit_seconds > 0 and fitted.params == model.params
    with pytest.raises(Exception, match="category_id missing"):
        model.fit(train.drop(columns="category_id"), tmp_path / "g", 0)


@pytest.mark.parametrize("params, message", [
    ({"epoch": "ten"}, "epoch: expected int"),
    ({"epochs": 5}, "epochs: unknown key; did you mean 'epoch'"),
    ({"wordNgrams": 9}, "above the maximum"),
    ({"text": {"fields": "title"}}, None),  # model text overrides are a free mapping, checked where used
])
def test_settings_are_checked_when_a_model_is_built_from_python(params, message):
    from prodcat.models.base import ModelEnv
    from prodcat.models.fasttext import FastTextModel

    if message is None:
        FastTextModel(params, ModelEnv(text={}))
        return
    with pytest.raises(SettingsError, match=message):
        FastTextModel(params, ModelEnv(text={}))


def test_fasttext_learns_the_same_model_whatever_the_order_of_its_rows(tmp_path):
    """fastText reads its training file in order with a decaying learning rate: rows sorted by category (a
    catalogue export) would train a model of the last categories. It reads them in a seeded order of their ids."""
    from prodcat.models.base import ModelEnv
    from prodcat.models.fasttext import FastTextModel

    rows = products(300, seed=5)
    model = FastTextModel({"epoch": 5, "thread": 1}, ModelEnv(text={}))
    unseen = products(60, seed=6, labels=False, start_id=5000)
    shuffled = model.fit(rows.sample(frac=1, random_state=1), tmp_path / "a").predict(unseen)
    by_category = model.fit(rows.sort_values("category_id"), tmp_path / "b").predict(unseen)
    assert np.array_equal(shuffled.labels, by_category.labels)
    assert np.allclose(shuffled.scores, by_category.scores)


def test_one_spec_per_model_and_the_lists_derived_from_it():
    import prodcat
    from prodcat.models.base import BaseModel, model_class
    from prodcat.settings import MODEL_SPECS, RunSettings, StackSettings, defaults_of, resolve

    assert list(MODEL_SPECS) == ["fasttext", "tfidf", "image", "coca", "id_neighbours", "knn"]  # prodcat.models
    for spec in MODEL_SPECS.values():  # each model's settings are declared in its own module
        assert spec.settings.__module__ == spec.cls.__module__
    assert defaults_of(RunSettings)["pipeline"] == [n for n, s in MODEL_SPECS.items() if s.pipeline]
    assert resolve([]).values["stack"]["hide"] == {"id_neighbours": 1.0} and defaults_of(StackSettings)["hide"] == {}
    for name in MODEL_SPECS:
        cls = model_class(name)
        assert issubclass(cls, BaseModel) and cls.name == name
        assert "_fit" in vars(cls) and "fit" not in vars(cls)  # the template: models implement _fit only
    assert model_class("id_neighbours").uses_ids and model_class("image").uses_photos
    assert not model_class("fasttext").uses_photos and model_class("fasttext").uses_text
    # registering every model loads no torch: a fastText-only run or service never pays for it
    code = "import sys, prodcat.models; print('torch' in sys.modules)"
    src = str(Path(prodcat.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": src})
    assert out.stdout == "False\n"


# -- memos ----------------------------------------------------------------------------------------------
def test_bounded_memo_is_bounded_and_makes_a_value_once_across_threads():
    memo = BoundedMemo(3)
    made = []

    def make(key):
        made.append(key)
        return key * 2

    threads = [threading.Thread(target=lambda: memo.get_or_make("a", lambda: make("a"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == ["a"] and memo.get("a") == "aa"
    for key in "bcde":
        memo.put(key, key)
    assert len(memo) == 3 and "a" not in memo and memo.get("e") == "e"


def test_product_texts_from_several_threads_match_one_thread():
    from prodcat.data.text import product_texts

    frames = [products(50, seed=s, start_id=1000 * s) for s in range(8)]
    expected = [product_texts(f, None).tolist() for f in frames]
    got = [None] * len(frames)

    def work(i):
        got[i] = product_texts(frames[i], None).tolist()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


# -- the package's shape --------------------------------------------------------------------------------
def imports_of(path: Path) -> set[str]:
    """prodcat modules imported anywhere in a file (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prodcat"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("prodcat")}
    return out


def test_no_import_circles():
    modules = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph = {m: {i for i in imports_of(p) if i in modules and i != m and i != "prodcat"}
             for m, p in modules.items()}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for m in graph:
        if m not in index:
            visit(m)
    assert not circles


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long
