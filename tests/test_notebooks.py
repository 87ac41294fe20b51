"""notebooks/compare_oof.ipynb runs top to bottom on a tiny finished run (so it can never rot)."""
import nbformat
import numpy as np
from conftest import REPO
from nbclient import NotebookClient

from prodcat.probs import TopK
from prodcat.training.run import Run
from prodcat.training.runner import bag_of, train_model
from prodcat.training.stack import run_stack


def test_compare_notebook_executes(tiny, tiny_config, tmp_path, monkeypatch):
    w = tmp_path / "w"
    run = Run.open(tiny, tiny_config, w)
    assert train_model(run, "tfidf", echo=lambda *a: None)
    # a second (fake, noisy) base model so the average and the stacker have something to combine
    rng = np.random.default_rng(0)
    leaves = np.array(sorted(run.ds.tree.leaves))
    proba = rng.dirichlet(np.ones(len(leaves)), size=len(run.ds.train))
    out = run.paths.oof("fasttext")
    TopK.from_dense(run.ds.train["id"].to_numpy(), proba, leaves, run.top_k).save(out / "oof.npz")
    bag_of(run, "fasttext").record(run.k, {"data": run.ds.fingerprint})  # a bag without children
    run_stack(run, echo=lambda *a: None)

    monkeypatch.setenv("PRODCAT_DATA", str(tiny))
    monkeypatch.setenv("PRODCAT_CONFIG", str(tiny_config))
    monkeypatch.setenv("PRODCAT_WORKDIR", str(w))
    nb = nbformat.read(REPO / "notebooks" / "compare_oof.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "tfidf" in text and "stack" in text and "average" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # the three figures


def test_notebook_command_writes_the_executed_notebook_as_html(tiny, tiny_config, tmp_path):
    """`./run.sh notebook` runs the notebook on a finished run: no Jupyter front end needed."""
    from click.testing import CliRunner

    from prodcat.cli import main

    common = ["--data", str(tiny), "--config", str(tiny_config), "--workdir", str(tmp_path / "w")]
    assert CliRunner().invoke(main, ["train", "tfidf", *common]).exit_code == 0
    r = CliRunner().invoke(main, ["notebook", *common])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "w" / "reports" / "tiny" / "compare_oof.html").read_text()
    assert "models: tfidf" in html and "cover@0.98" in html and "Traceback" not in html
