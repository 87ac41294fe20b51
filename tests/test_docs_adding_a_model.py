"""docs/adding-a-model.md's worked example of a new base model (one file + one import line) really works: it trains
per fold through the runner, saves, loads and predicts like the shipped models."""
import importlib
import re
import sys

import numpy as np
from conftest import REPO

from prodcat import settings
from prodcat.models.base import load_model
from prodcat.training.run import Run
from prodcat.training.runner import train_model


def test_readme_centroid_model_trains_saves_and_predicts(tiny, tiny_config, tmp_path, monkeypatch):
    page = (REPO / "docs" / "adding-a-model.md").read_text()
    code = re.search(r"```python\n(# src/prodcat/models/centroid\.py.*?)```", page, re.S).group(1)
    (tmp_path / "centroid_example.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("centroid_example")  # what its import line in prodcat/models/__init__.py does
    try:
        assert "centroid" in settings.MODEL_SPECS
        assert "centroid" not in settings.defaults_of(settings.RunSettings)["pipeline"]  # pipeline=False
        run = Run.open(tiny, tiny_config, tmp_path / "w")
        assert train_model(run, "centroid", echo=lambda *a: None)
        model = load_model(run.paths.models("centroid") / "fold0")
        fold = run.folds["fold"].to_numpy()
        pred = model.predict(run.ds.train_frame()[fold == 0])
        stored = np.load(run.paths.oof("centroid") / "fold0.valid.npz")
        assert np.array_equal(pred.labels, stored["labels"]) and np.array_equal(pred.scores, stored["scores"])
        y = run.ds.train["category_id"].to_numpy()[fold == 0]
        assert (pred.top1() == y).mean() > 0.9
    finally:
        settings.MODEL_SPECS.pop("centroid", None)
        sys.modules.pop("centroid_example", None)
