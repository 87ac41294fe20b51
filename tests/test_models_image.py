"""Image model: torchvision fix, weight loading (and its failures), photo loading, missing/corrupt photos,
the no-images dataset, the content-keyed embedding cache, the k-fold run end to end on a tiny dataset
with coloured photos, and save -> load in a fresh process giving the same predictions."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, products, write_dataset
from PIL import Image

from prodcat.cli import main
from prodcat.memo import BoundedMemo
from prodcat.models.nn.vision import (
    BackboneSpec,
    WeightsError,
    create_backbone,
    import_timm,
    load_image,
    package_weights,
)
from prodcat.probs import TopK

COLOURS = {11: (220, 30, 30), 12: (30, 200, 40), 21: (40, 60, 220), 23: (230, 220, 40), 24: (200, 40, 200)}


def write_photos(root, frame, split, skip=(), corrupt=(), png=()):
    """A coloured photo per product (the colour tells the class), some missing, some corrupt."""
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(frame))
    cats = frame["category_id"] if "category_id" in frame else [11] * len(frame)
    for pid, cat in zip(frame["id"].tolist(), list(cats)):
        if pid in skip:
            continue
        if pid in corrupt:
            (folder / f"{pid}.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
            continue
        base = np.array(COLOURS[int(cat)], np.float32)
        pixels = np.clip(base + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels)
        if pid in png:
            im.convert("RGBA").save(folder / f"{pid}.png")
        else:
            im.save(folder / f"{pid}.jpg", quality=90)


def config(tmp_path, extra=""):
    path = tmp_path / "img.yaml"
    path.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\npipeline: [image]\n"
                    "models:\n  image:\n    image_size: 64\n    epochs: 25\n    embed_batch_size: 64\n"
                    "    trainer: {progress_bar: false}\n")
    if extra:  # the extra settings in a file of their own: a YAML mapping may not repeat a key
        over = tmp_path / "img_extra.yaml"
        over.write_text(f"extends: {path}\nmodels:\n  image:\n" + extra)
        return over
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone(BackboneSpec("tf_efficientnet_lite0"))


def test_torchvision_and_timm_import():
    timm = import_timm()
    import torchvision

    assert hasattr(torchvision, "transforms") and hasattr(timm, "create_model")


def test_lite0_package_weights_mapped_by_order(lite0):
    src = torch.load(package_weights(), map_location="cpu", weights_only=True)
    state = lite0.state_dict()
    assert torch.equal(state["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(state["blocks.0.0.conv_dw.weight"], src["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(state["bn2.running_var"], src["_bn1.running_var"])  # the last backbone tensor
    assert lite0.num_features == 1280
    # ImageNet-quality features: a red and a green square are far apart, two reds close
    from prodcat.models.nn.vision import backbone_norm, eval_transform

    tf = eval_transform(96, *backbone_norm(lite0))
    ims = [Image.new("RGB", (60, 60), c) for c in [(220, 20, 20), (210, 30, 25), (20, 200, 30)]]
    with torch.inference_mode():
        f = torch.nn.functional.normalize(lite0.eval()(torch.stack([tf(i) for i in ims])), dim=1)
    assert f[0] @ f[1] > f[0] @ f[2]


def test_weights_failures_are_clear(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found"):
        BackboneSpec("tf_efficientnet_lite0", weights=str(tmp_path / "nope.pth")).source()
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="not the same architecture"):
        create_backbone(BackboneSpec("tf_efficientnet_lite0", weights=str(wrong)))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_backbone(BackboneSpec("tf_efficientnet_lite0", weights=str(garbage)))

    timm = import_timm()
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="timm could not get them"):
        create_backbone(BackboneSpec("efficientnet_b3", weights="timm"))
    # explicitly not pretrained: random weights are allowed, because they were asked for
    assert BackboneSpec("tf_efficientnet_lite0", pretrained=False).source() is None


def test_weights_failure_stops_training_with_a_message(tmp_path):
    root = write_dataset(tmp_path / "d", n_train=30, n_test=6)
    from conftest import products

    write_photos(root, products(30), "train")
    cfg = config(tmp_path, f"    weights: {tmp_path / 'missing.pth'}\n")
    r = CliRunner().invoke(main, ["train", "image", "--data", str(root), "--config", str(cfg),
                                  "--workdir", str(tmp_path / "w")])
    assert r.exit_code != 0 and "missing.pth" in r.output and "not found" in r.output
    assert not (tmp_path / "w" / "oof").exists() or not list((tmp_path / "w" / "oof").rglob("fold*.json"))


def test_load_image_formats_missing_corrupt(tmp_path):
    assert load_image(None) is None
    assert load_image(tmp_path / "absent.jpg") is None
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert load_image(bad) is None
    trunc = tmp_path / "trunc.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    trunc.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    assert load_image(trunc) is None
    Image.new("RGBA", (10, 12), (0, 0, 0, 0)).save(tmp_path / "t.png")
    im = load_image(tmp_path / "t.png")
    assert im.mode == "RGB" and im.size == (10, 12) and im.getpixel((0, 0)) == (255, 255, 255)
    Image.new("L", (8, 8), 100).save(tmp_path / "g.webp")
    assert load_image(tmp_path / "g.webp").mode == "RGB"


def with_paths(frame, root, split):
    """The frame with its `image_path` column (None where the product has no photo), as the runner gives it."""
    paths = []
    for pid in frame["id"].tolist():
        found = [p for p in (root / "images" / split / f"{pid}.jpg", root / "images" / split / f"{pid}.png")
                 if p.exists()]
        paths.append(str(found[0]) if found else None)
    return frame.assign(image_path=pd.Series(paths, index=frame.index, dtype=object))


def photo_frames(root):
    """Train (120: 3 without a photo, 2 corrupt) and test (30: 1 without a photo) frames with image_path."""
    train, test = products(120), products(30, seed=1, labels=False, start_id=9000)
    ids = train["id"].tolist()
    write_photos(root, train, "train", skip=set(ids[:3]), corrupt=set(ids[3:5]), png=set(ids[5:7]))
    write_photos(root, test, "test", skip={9000})
    return with_paths(train, root, "train"), with_paths(test, root, "test")


def model_params(name, extra=None):
    from prodcat.settings import deep_merge, load_config

    cfg = load_config(REPO / "configs" / "default.yaml")
    return deep_merge(cfg["models"][name], extra or {}), cfg["text"]


def fresh_process_predict(folder, frame, tmp_path) -> TopK:
    """Load the saved model in a new Python process (prodcat.models.base.load_model) and predict `frame` there."""
    src, out = tmp_path / "input.parquet", tmp_path / "fresh.npz"
    frame.to_parquet(src, index=False)
    code = ("import sys, pandas as pd; from pathlib import Path; from prodcat.models.base import load_model; "
            "load_model(Path(sys.argv[1])).predict(pd.read_parquet(sys.argv[2])).save(Path(sys.argv[3]))")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(src), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return TopK.load(out)


def assert_same(a: TopK, b: TopK):
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.missing, b.missing)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.scores, b.scores)  # bit for bit
    assert a.flags.keys() == b.flags.keys() and all(np.array_equal(a.flags[k], b.flags[k]) for k in a.flags)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose header claims width x height pixels (what a photo bomb looks like before decoding)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")  # start of frame: length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_one_photo_reader_with_one_pixel_limit_for_files_and_requests(tmp_path):
    """A 12000 x 12000 JPEG in images/ is skipped and listed (the reason names the limit) without decoding a
    pixel, as the service refuses it in a request: the same reader and the same limit."""
    import resource

    from prodcat.data.photos import MAX_PIXELS
    from prodcat.errors import DataError
    from prodcat.models.nn.vision import load_image, report_skipped
    from prodcat.serve.photos import checked_suffix

    bomb, fine = tmp_path / "1.jpg", tmp_path / "2.jpg"
    bomb.write_bytes(jpeg_claiming(12000, 12000))
    fine.write_bytes(jpeg_claiming(16, 16))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert load_image(str(bomb)) is None and load_image(str(fine)) is not None
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing decoded
    frame = pd.DataFrame({"id": [1, 2], "image_path": [str(bomb), str(fine)]})
    line = report_skipped(frame, tmp_path / "skipped.csv")
    listed = pd.read_csv(tmp_path / "skipped.csv")
    assert listed["id"].tolist() == [1] and "1 unreadable" in line
    assert f"12000 x 12000 pixels is over the limit of {MAX_PIXELS:,}" in listed["reason"][0]
    with pytest.raises(DataError, match=f"12000 x 12000 pixels is over the limit of {MAX_PIXELS:,}"):
        checked_suffix(bomb.read_bytes(), MAX_PIXELS)


def test_no_images_dataset_is_skipped(tiny, tmp_path):
    r = invoke("train", "image", "--data", tiny, "--config", config(tmp_path), "--workdir", tmp_path / "w")
    assert r.exit_code == 0 and "[image] skipped" in r.output
    assert "no product of the training rows has a photo" in r.output


def test_embedding_cache_is_keyed_by_content(tmp_path, monkeypatch):
    """Memo and disk cache by (path, size, mtime): only unseen photos are embedded, a repaired photo is
    embedded again, and a photo's numbers do not depend on the photos embedded with it or on the cache."""
    from prodcat.models.nn import vision
    from prodcat.models.nn.vision import BackboneSpec, photo_embeddings

    root = tmp_path / "d"
    train, _ = photo_frames(root)
    paths = train["image_path"].tolist()
    spec, cache = BackboneSpec("tf_efficientnet_lite0"), tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(vision, "_STORES", BoundedMemo(4))
    log = []

    def embed(p, **kw):
        return photo_embeddings(p, spec, 64, grid=2, batch_size=16, cache=cache, echo=log.append, **kw)

    some = embed(paths[:50])
    assert some.embedded == 47 and log[-1].endswith("2 failed to decode: treated as missing")
    full = embed(paths)
    assert full.embedded == 70 and full.cached == 47  # only the photos not seen yet
    assert full.summary() == ("photos: 115 of 120 products usable, 3 without a photo, 2 unreadable; "
                              "embeddings: 70 computed, 47 from the cache")
    assert np.array_equal(full.pooled[:50], some.pooled) and np.array_equal(full.tokens[:50], some.tokens)
    assert full.tokens.shape == (120, 4, 1280) and not full.pooled[~full.usable].any()
    assert len(list(cache.glob("img-tf_efficientnet_lite0-*.npz"))) == 2

    monkeypatch.setattr(vision, "_STORES", BoundedMemo(4))  # a new process: everything comes from the cache files
    again = embed(paths[::-1], tokens=False)
    assert again.embedded == 0 and again.tokens is None
    assert np.array_equal(again.pooled[::-1], full.pooled) and np.array_equal(again.usable[::-1], full.usable)
    monkeypatch.setattr(vision, "_STORES", BoundedMemo(4))  # and without cache: embedded again, to the same numbers
    alone = photo_embeddings(paths[::-1][:7], spec, 64, grid=2, batch_size=16, cache=None, echo=log.append)
    assert np.array_equal(alone.pooled, full.pooled[::-1][:7])

    fixed = paths[3]  # a corrupt photo replaced by a good one: new size and mtime, embedded again
    Image.new("RGB", (40, 40), (220, 30, 30)).save(fixed, format="JPEG")
    repaired = embed(paths)
    assert repaired.embedded == 1 and repaired.usable[3] and repaired.usable.sum() == 116
    assert not full.usable[3]


def test_image_model_kfold_missing_and_corrupt_photos(tiny, tmp_path):
    train = products(120)
    ids = train["id"].tolist()
    missing, corrupt = set(ids[:4]), set(ids[4:6])
    write_photos(tiny, train, "train", skip=missing, corrupt=corrupt, png=set(ids[6:8]))
    write_photos(tiny, products(30, seed=1, labels=False, start_id=9000), "test", skip={9000})
    common = ["--data", tiny, "--config", config(tmp_path), "--workdir", tmp_path / "w"]
    r = invoke("train", "image", *common)
    assert r.exit_code == 0, r.output
    assert "114 of 120 products usable, 4 without a photo, 2 unreadable" in r.output  # training rows only
    assert "all folds finished" in r.output
    skipped = pd.read_csv(tmp_path / "w" / "reports" / "tiny" / "skipped_photos_train.csv")  # listed, by id
    assert set(skipped.loc[skipped["reason"] == "no photo", "id"]) == missing
    assert set(skipped.loc[skipped["reason"].str.startswith("unreadable"), "id"]) == corrupt
    assert "skipped_photos_train.csv" in r.output
    oof = TopK.load(tmp_path / "w" / "oof" / "tiny" / "image" / "oof.npz")
    no_photo = np.isin(oof.ids, list(missing | corrupt))
    assert np.array_equal(oof.missing, no_photo)  # exactly the products without a usable photo
    assert (oof.labels[no_photo] == -1).all()  # no made-up prediction
    y = train.set_index("id").loc[oof.ids[~no_photo], "category_id"].to_numpy()
    assert (oof.top1()[~no_photo] == y).mean() > 0.9  # colours tell the classes apart
    assert list((tmp_path / "w" / "cache" / "tiny").glob("img-tf_efficientnet_lite0-*.npz"))
    fold0 = tmp_path / "w" / "models" / "tiny" / "image" / "fold0"
    assert list((fold0 / "tb").rglob("events.out.tfevents*"))
    assert not list(fold0.rglob("*.ckpt"))  # no pickled checkpoints in a model folder
    assert {"head.pt", "classes.npz", "image.json", "model.json"} <= {p.name for p in fold0.iterdir()}

    from prodcat.models.base import load_model  # test products: the saved fold models, as `predict` runs them

    test = with_paths(products(30, seed=1, labels=False, start_id=9000), tiny, "test")
    pred = load_model(fold0).predict(test)
    assert pred.missing.tolist() == [i == 9000 for i in test["id"]]
    r = invoke("refit", "image", *common)  # the full model: every product, the folds' settings
    assert r.exit_code == 0 and "[image] full: trained on 120 products" in r.output, r.output
    full = tmp_path / "w" / "models" / "tiny" / "image" / "full"
    assert_same(fresh_process_predict(full, test, tmp_path), load_model(full).predict(test))

    r = invoke("scores", *common)
    header = next(line for line in r.output.splitlines() if line.split()[:1] == ["model"]).split()
    row = next(line for line in r.output.splitlines() if line.split()[:1] == ["image"])
    assert row.split()[header.index("missing")] == "6"  # the missing count

    r = invoke("train", "image", "--fold", "1", "--force", *common)
    assert "embeddings: 0 computed, 116 from the cache" in r.output and "fold 1: trained" in r.output
    again = TopK.load(tmp_path / "w" / "oof" / "tiny" / "image" / "fold1.valid.npz")
    assert_same(again, oof.take(np.flatnonzero(np.isin(oof.ids, again.ids))).align(again.ids))  # same numbers


def test_image_save_load_fresh_process(tmp_path):
    """fit -> save -> load_model in a new process -> predict: the same probabilities, bit for bit."""
    from prodcat.models.base import ModelEnv, load_model, save_model
    from prodcat.models.image import ImageModel

    train, test = photo_frames(tmp_path / "d")
    params, text = model_params("image", {"image_size": 64, "epochs": 5, "mode": "frozen",
                                          "trainer": {"progress_bar": False}})
    model = ImageModel(params, ModelEnv(text=text, cache=tmp_path / "cache"))
    assert model.skip_reason(train) is None
    assert "no product" in model.skip_reason(train.assign(image_path=None))
    model.prepare(train)
    fitted = model.fit(train, tmp_path / "fold0", 0)
    folder = tmp_path / "saved"
    save_model(fitted, folder, "image", {})
    assert not list(folder.glob("*.pkl")) and (folder / "head.pt").stat().st_size < 5_000_000  # no backbone
    state = torch.load(folder / "head.pt", weights_only=True)
    assert set(state) >= {"mean", "std"} and all(isinstance(v, torch.Tensor) for v in state.values())

    here = fitted.predict(test)
    assert here.missing.tolist() == [i == 9000 for i in test["id"]]
    assert_same(fresh_process_predict(folder, test, tmp_path), here)
    assert_same(load_model(folder).predict(test), here)
    # the weights a head was trained on must still be the ones found on load
    import json

    meta = json.loads((folder / "image.json").read_text())
    (folder / "image.json").write_text(json.dumps(meta | {"weights_id": "tf_efficientnet_lite0|other.pth:1"}))
    from prodcat.models.base import file_checksums

    with pytest.raises(ValueError, match="image.json: damaged or incomplete model file"):
        load_model(folder)  # the edited file no longer matches model.json's checksum
    described = json.loads((folder / "model.json").read_text())  # a consistent folder, other weights
    (folder / "model.json").write_text(json.dumps(described | {"files": file_checksums(folder)}))
    with pytest.raises(WeightsError, match="retrain the image model"):
        load_model(folder)


def test_finetune_mode_runs_on_cpu(tiny, tmp_path):
    """The GPU configuration's code path (whole network trained on augmented photos), tiny and on a CPU;
    its saved network predicts as the trained one."""
    train = products(120)
    write_photos(tiny, train, "train", skip={train["id"].iloc[0]}, corrupt={train["id"].iloc[1]})
    write_photos(tiny, products(30, seed=1, labels=False, start_id=9000), "test")
    cfg = config(tmp_path, "    mode: finetune\n    image_size: 32\n    epochs: 1\n    batch_size: 16\n"
                           "    num_workers: 0\n")
    r = invoke("train", "image", "--fold", "0", "--data", tiny, "--config", cfg, "--workdir", tmp_path / "w")
    assert r.exit_code == 0, r.output
    valid = TopK.load(tmp_path / "w" / "oof" / "tiny" / "image" / "fold0.valid.npz")
    no_photo = np.isin(valid.ids, train["id"].iloc[:2].tolist())
    assert np.array_equal(valid.missing, no_photo) and (valid.labels[~no_photo, 0] > 0).all()
    fold0 = tmp_path / "w" / "models" / "tiny" / "image" / "fold0"
    assert (fold0 / "network.pt").exists() and not list(fold0.rglob("*.ckpt"))

    from prodcat.models.base import load_model
    from prodcat.training.run import Run

    run = Run.open(tiny, cfg, tmp_path / "w")
    frame = run.ds.train_frame()
    rows = frame[frame["id"].isin(valid.ids)]
    assert_same(load_model(fold0).predict(rows).align(valid.ids), valid)  # the saved network = the trained one
