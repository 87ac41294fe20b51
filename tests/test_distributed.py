"""Multi-process (DDP) training on a CPU: two processes over gloo, end to end through the CLI, for the image
model (whole network fine-tuned, the GPU configuration's path) and CoCa (stage 1 and a joint stage 2: two
fits in one fold). The same code path serves `devices: N` GPUs and `num_nodes: M` (NCCL)."""
from __future__ import annotations

import subprocess

import numpy as np
from click.testing import CliRunner
from conftest import REPO, products
from test_models_image import write_photos

from prodcat.cli import main
from prodcat.probs import TopK

DDP = ("--set", "models.{m}.trainer.accelerator=cpu", "--set", "models.{m}.trainer.devices=2",
       "--set", "models.{m}.trainer.strategy=ddp")


def config(tmp_path):
    path = tmp_path / "ddp.yaml"
    path.write_text(
        f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\n"
        "models:\n"
        "  image:\n    mode: finetune\n    image_size: 32\n    epochs: 1\n    batch_size: 16\n    num_workers: 0\n"
        "    trainer: {progress_bar: false, cpu_threads: 1}\n"
        "  coca:\n    seq_len: 12\n    dim: 32\n    unimodal_depth: 1\n    multimodal_depth: 1\n    heads: 2\n"
        "    dim_head: 16\n    ff_mult: 2\n    num_img_queries: 4\n    batch_size: 32\n    stage1_epochs: 1\n"
        "    stage2: joint\n    stage2_epochs: 2\n    trainer: {progress_bar: false, cpu_threads: 1}\n"
        "    image_encoder: {type: vit, image_size: 32, patch: 8, dim: 32, depth: 1, heads: 2}\n")
    return path


def train(model, data, cfg, workdir, ddp: bool):
    """`train MODEL --fold 0`: with ddp through run.sh (Lightning starts the second process by running the
    same command line again), else in this process."""
    args = ["train", model, "--fold", "0", "--data", str(data), "--config", str(cfg), "--workdir", str(workdir)]
    if not ddp:
        r = CliRunner().invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output
    args += [a.format(m=model) for a in DDP]
    done = subprocess.run([str(REPO / "run.sh"), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_image_and_coca_train_a_fold_with_two_processes(tiny, tmp_path):
    train_rows = products(120)
    write_photos(tiny, train_rows, "train", skip={train_rows["id"].iloc[0]})
    write_photos(tiny, products(30, seed=1, labels=False, start_id=9000), "test")
    cfg = config(tmp_path)
    for model in ("image", "coca"):
        out = train(model, tiny, cfg, tmp_path / "ddp", ddp=True)
        assert "2 processes (1 per node" not in out  # 2 per node: both processes are on this machine
        assert "2 processes (2 per node x 1 node(s), ddp over gloo)" in out, out
        assert out.count("size rule") == 2, out  # the second process ran the same command
        assert out.count(f"[{model}] fold 0: trained") == 1, out  # ... and rank 0 alone wrote the fold
        oof = tmp_path / "ddp" / "oof" / "tiny" / model
        fold = tmp_path / "ddp" / "models" / "tiny" / model / "fold0"
        assert (oof / "fold0.json").exists() and (fold / "model.json").exists()
        assert not list(tmp_path.joinpath("ddp").rglob("*.tmp*"))  # nothing half-written
        assert not (oof / "fold1.json").exists()
        train(model, tiny, cfg, tmp_path / "one", ddp=False)
        multi = TopK.load(oof / "fold0.valid.npz")
        single = TopK.load(tmp_path / "one" / "oof" / "tiny" / model / "fold0.valid.npz")
        assert np.array_equal(multi.ids, single.ids) and np.array_equal(multi.missing, single.missing)
        have = ~multi.missing
        # the same global batch and steps: the two runs differ only in the order of the samples
        agree = (multi.labels[have, 0] == single.labels[have, 0]).mean()
        assert agree >= 0.8, (model, agree)
        assert np.abs(multi.scores[have, 0] - single.scores[have, 0]).mean() < 0.15


def test_a_model_asking_for_another_process_count_than_the_running_one_stops_clearly():
    """The processes Lightning started for one model serve the rest of the command: a later model asking for
    another count would train on a wrong share of the data. It stops with a message instead."""
    import socket

    import pytest
    import torch.distributed as dist

    from prodcat.errors import DataError
    from prodcat.models.nn.trainer import check_world, world_size

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        check_world(world_size({"accelerator": "cpu", "devices": 1}), "coca")  # the same count: fine
        with pytest.raises(DataError, match="already trains with 1 processes, but this model's trainer section "
                                            "asks for 2"):
            check_world(world_size({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}), "coca")
    finally:
        dist.destroy_process_group()
