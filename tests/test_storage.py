"""Two processes on one workdir: they never mix their outputs (the outputs' locks), and a killed run's
leftovers are cleaned."""
import json
import os
import subprocess
import sys
import time

import numpy as np
from conftest import REPO

from prodcat.probs import TopK


def start(*args, env_extra=None):
    env = os.environ | {"PYTHONPATH": str(REPO / "src")} | (env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "prodcat", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_trainings_with_different_settings_do_not_mix_their_folds(tiny, tiny_config, tmp_path):
    common = ["--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w"]
    a = start("train", "tfidf", *common, "--set", "models.tfidf.epochs=3")
    time.sleep(0.5)
    b = start("train", "tfidf", *common, "--set", "models.tfidf.epochs=4")
    out_a, out_b = a.communicate(timeout=300)[0], b.communicate(timeout=300)[0]
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    oof = tmp_path / "w" / "oof" / "tiny" / "tfidf"
    complete = json.loads((tmp_path / "w" / "models" / "tiny" / "tfidf" / "bag.json").read_text())
    folds = [json.loads((oof / f"fold{f}.json").read_text()) for f in range(3)]
    assert {f["settings"] for f in folds} == {complete["settings"]}  # one run's folds, never a mix
    joined = TopK.load(oof / "oof.npz")
    for f in range(3):
        part = TopK.load(oof / f"fold{f}.valid.npz")
        assert np.array_equal(joined.align(part.ids).scores, part.scores)  # oof.npz is made of these folds


def test_a_second_writer_waits_and_names_the_holder(tiny, tiny_config, tmp_path):
    from prodcat.outputs import Paths
    from prodcat.storage import locked

    with locked(Paths(tmp_path / "w", "tiny"), "tfidf.fold0"):  # this test process holds fold 0
        p = start("train", "tfidf", "--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w")
        time.sleep(8)
        assert p.poll() is None  # still waiting
        assert not (tmp_path / "w" / "oof" / "tiny" / "tfidf" / "fold0.json").exists()
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert f"tiny/tfidf.fold0 is being written by process {os.getpid()}" in out and "waiting" in out
    assert (tmp_path / "w" / "oof" / "tiny" / "tfidf" / "oof.npz").exists()


def test_leftovers_of_a_killed_run_are_cleaned_and_outputs_have_normal_modes(tiny, tiny_config, tmp_path):
    from click.testing import CliRunner

    from prodcat.cli import main

    oof = tmp_path / "w" / "oof" / "tiny" / "tfidf"
    oof.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = oof / f".fold0.valid.npz.pid{dead.pid}.abc123.tmp"  # what a killed run's atomic write leaves
    live = oof / f".fold9.valid.npz.pid{os.getpid()}.abc123.tmp"  # a running process's: kept
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    r = CliRunner().invoke(main, ["train", "tfidf", "--data", str(tiny), "--config", str(tiny_config),
                                  "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    assert not stale.exists() and live.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (oof / "oof.npz").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_a_read_only_workdir_fails_before_any_work(tiny, tiny_config, tmp_path):
    from click.testing import CliRunner

    from prodcat.cli import main

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["all", "--data", str(tiny), "--config", str(tiny_config), "--workdir",
                                  str(blocker / "w")])  # a path under a file: nothing can be written there
    assert r.exit_code == 1 and "the workdir cannot be written" in r.output and "--workdir" in r.output
    assert "Traceback" not in r.output


def test_folds_trained_by_separate_processes_at_once_then_stacked(tiny, tiny_config, tmp_path):
    """The k-fold grid as independent jobs: `train MODEL --fold K` for every K at once on one workdir."""
    common = ["--data", tiny, "--config", tiny_config, "--workdir", tmp_path / "w"]
    jobs = [start("train", m, "--fold", f, *common) for m in ("fasttext", "tfidf") for f in range(3)]
    outs = [j.communicate(timeout=300)[0] for j in jobs]
    assert all(j.returncode == 0 for j in jobs), "\n".join(outs)
    oof = tmp_path / "w" / "oof" / "tiny"
    for m in ("fasttext", "tfidf"):
        assert (oof / m / "oof.npz").exists()  # the last fold to finish joined them
        assert len(TopK.load(oof / m / "oof.npz")) == 120
    done = start("stack", *common)
    out = done.communicate(timeout=300)[0]
    assert done.returncode == 0 and "[stack] fasttext, tfidf" in out, out
