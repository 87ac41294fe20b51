"""Benchmark of the image and CoCa base models on the demo data (CPU configuration).

    ./run.sh python bench/bench_image_coca.py [--data data/flipkart] [--skip-full]

Runs in a temporary workdir: fastText (for reference), the image model's 5 folds twice (cold: photos
embedded; warm: the content-keyed embedding cache reused, --force) and CoCa's 5 folds, each as
`./run.sh train` would (a subprocess, so imports count); then, in a new process, the 5 saved fold models of
image and CoCa load and predict the test products (their photos embedded there). Prints wall times, OOF
hF1 / weighted F1 / accuracy next to the majority class, parameter counts, CPU seconds per training step
(demo and, timed on a few small batches, the full configs/gpu.yaml CoCa), and the products missing a photo.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def train(model, data, workdir, *extra) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    start = time.time()
    subprocess.run([sys.executable, "-m", "prodcat", "train", model, "--data", str(data), "--workdir", str(workdir),
                    *extra], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def predict_saved(model, data, workdir) -> float:
    """Seconds for a new process to load the saved fold models of `model` and predict the test products."""
    code = ("import sys; from prodcat.models.base import load_model; from prodcat.training.run import Run; "
            "run = Run.open(sys.argv[1], None, sys.argv[2]); test = run.ds.test_with_photos(); "
            "[load_model(run.paths.models(sys.argv[3]) / f'fold{f}').predict(test) for f in range(run.k)]")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    start = time.time()
    subprocess.run([sys.executable, "-c", code, str(data), str(workdir), model], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.time() - start


def full_coca_step(batch: int = 4, steps: int = 2) -> dict:
    """CPU seconds per CoCa training step for the configs/gpu.yaml model (random weights: timing only)."""
    import torch

    from prodcat.models.nn.coca_net import CocaNet, TimmTokens
    from prodcat.models.nn.vision import import_timm
    from prodcat.settings import load_config

    cfg = load_config(REPO / "configs" / "gpu.yaml")["models"]["coca"]
    enc = cfg["image_encoder"]
    backbone = import_timm().create_model(enc["backbone"], pretrained=False, num_classes=0)
    encoder = TimmTokens(backbone)
    vocab = 50000
    net = CocaNet(torch.randn(vocab, 300) * 0.3, encoder.dim, encoder, cfg)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    text = torch.randint(4, vocab, (batch, int(cfg["seq_len"])))
    image = torch.randn(batch, 3, int(enc["image_size"]), int(enc["image_size"]))
    times = []
    for _ in range(steps + 1):
        c = time.process_time()
        net.loss(text, image).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.process_time() - c)
    per = float(np.mean(times[1:]))
    params = sum(p.numel() for p in net.parameters())
    return {"params": params, "backbone_params": sum(p.numel() for p in backbone.parameters()), "batch": batch,
            "cpu_s_per_step": per, "cpu_s_per_sample": per / batch, "config_batch": int(cfg["batch_size"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "flipkart"))
    ap.add_argument("--skip-full", action="store_true", help="skip timing the full (GPU) CoCa config on the CPU")
    args = ap.parse_args()

    from prodcat.evaluation.metrics import score
    from prodcat.training.run import Run
    from prodcat.training.scores import score_table

    work = Path(tempfile.mkdtemp(prefix="bench_image_coca_"))
    wall = {"fasttext": train("fasttext", args.data, work),
            "image (cold: photos embedded)": train("image", args.data, work),
            "image (warm: cache reused, --force)": train("image", args.data, work, "--force"),
            "coca (cache reused)": train("coca", args.data, work)}
    wall |= {f"{m} (predict test: load fold models, new process)": predict_saved(m, args.data, work)
             for m in ("image", "coca")}
    run = Run.open(args.data, REPO / "configs" / "default.yaml", work)
    y = run.ds.train["category_id"].to_numpy()
    values, counts = np.unique(y, return_counts=True)
    majority = score(y, np.full(len(y), values[counts.argmax()]), run.ds.tree)
    table = score_table(run, ["fasttext", "image", "coca"])

    print(f"\nbenchmark on {run.ds.name}: {len(run.ds.train)} train / {len(run.ds.test)} test products, "
          f"{run.k} folds, workdir {work}")
    print("\nwall time (5 folds, subprocess incl. imports):")
    for name, sec in wall.items():
        print(f"  {name:52s} {sec:6.1f} s")
    print("\nOOF scores (on products each model predicted; `missing` = no usable photo):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"  majority class ({values[counts.argmax()]}, {counts.max()}/{len(y)}): hF1 {majority['hF1']:.4f}, "
          f"weighted F1 {majority['weighted_F1']:.4f}, accuracy {majority['accuracy']:.4f}")

    from prodcat.models.nn.heads import FeatureHead
    from prodcat.models.nn.trainer import count_params
    from prodcat.models.nn.vision import BackboneSpec, create_backbone

    p = run.model_params("image")
    backbone = create_backbone(BackboneSpec.from_config(p))
    head = FeatureHead(backbone.num_features, len(values), p)
    print(f"\nimage: backbone {p['backbone']} (frozen, {count_params(backbone):,} params, {p['image_size']} px), "
          f"head {count_params(head):,} trainable params")
    stats = [json.loads((run.paths.models("coca") / f"fold{f}" / "stats.json").read_text()) for f in range(run.k)]
    s1 = [s["stage1"] for s in stats]
    print(f"coca (demo config): {stats[0]['params']:,} params (vocab {stats[0]['vocab']}, "
          f"{stats[0]['navec_hits']} lemmas from navec), stage 1: {np.mean([s['cpu_s_per_step'] for s in s1]):.3f} "
          f"CPU s/step, {np.mean([s['wall_s_per_step'] for s in s1]):.3f} wall s/step "
          f"(batch {run.model_params('coca')['batch_size']}, {s1[0]['steps']} steps/fold); stage 2 "
          f"({stats[0]['stage2']['mode']}): {np.mean([s['stage2']['cpu_s_per_step'] for s in stats]):.4f} CPU s/step")
    if not args.skip_full:
        full = full_coca_step()
        print(f"coca (configs/gpu.yaml, timed on this CPU at batch {full['batch']}): {full['params']:,} params "
              f"({full['backbone_params']:,} in the backbone), {full['cpu_s_per_step']:.2f} CPU s/step = "
              f"{full['cpu_s_per_sample']:.2f} CPU s/sample -> ~{full['cpu_s_per_sample'] * full['config_batch']:.0f} "
              f"CPU s for one step of the configured batch {full['config_batch']}")


if __name__ == "__main__":
    main()
