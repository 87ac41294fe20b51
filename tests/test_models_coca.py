"""CoCa model: natasha/navec tokenizer, text-only predictions for products without a photo, fold resume
(finished folds and the content-keyed stage-1 weights), the ViT image encoder and the joint stage 2, and
save -> load in a fresh process giving the same predictions."""
from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from conftest import REPO, products
from PIL import Image
from test_models_image import assert_same, fresh_process_predict, model_params, photo_frames, with_paths, write_photos

from prodcat.cli import main
from prodcat.data.tokens import BOS, EOS, PAD, UNK, Vocab, lemmas, navec_matrix
from prodcat.probs import TopK

SMALL = ("    seq_len: 12\n    dim: 32\n    unimodal_depth: 1\n    multimodal_depth: 1\n    heads: 2\n"
         "    dim_head: 16\n    ff_mult: 2\n    num_img_queries: 4\n    batch_size: 32\n    stage1_epochs: 1\n"
         "    stage2_epochs: 10\n    trainer: {progress_bar: false}\n")


def config(tmp_path, extra=""):
    path = tmp_path / "coca.yaml"
    path.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\npipeline: [coca]\n"
                    "models:\n  coca:\n" + SMALL +
                    "    image_encoder: {type: timm, backbone: tf_efficientnet_lite0, image_size: 64, token_grid: 2}\n"
                    + extra)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_lemmas_russian_english_empty():
    assert lemmas("Кошки бегали по крышам!") == ["кошка", "бегать", "по", "крыша"]
    assert lemmas("Running Shoes for Men, 2 pcs") == ["running", "shoes", "for", "men", "2pcs"]
    assert lemmas("Молоко 3,2% 1 л для кошек") == ["молоко", "3.2%", "1л", "для", "кошка"]
    assert lemmas("") == [] and lemmas(None) == [] and lemmas(" , . ! ") == []
    assert lemmas("раз два три четыре", limit=2) == ["раз", "два"]


def test_vocab_encode_and_navec_hits_and_misses():
    docs = [lemmas("Кошка ест корм"), lemmas("кошка пьёт молоко"), lemmas("dog food qzxwvplk")]
    vocab = Vocab.build(docs, max_size=100)
    assert vocab.words[:4] == [PAD, UNK, BOS, EOS] and vocab.words[4] == "кошка"  # most frequent first
    ids = vocab.encode(["кошка", "незнакомоеслово"], seq_len=6)
    assert ids.tolist() == [vocab.index[BOS], vocab.index["кошка"], vocab.index[UNK], vocab.index[EOS], 0, 0]
    assert vocab.encode(lemmas(""), 4).tolist() == [vocab.index[BOS], vocab.index[EOS], 0, 0]
    assert len(vocab.encode(["кошка"] * 50, 8)) == 8

    matrix, hits = navec_matrix(vocab)
    assert matrix.shape == (len(vocab), 300) and not matrix[0].any()  # <pad> is zero
    hit = dict(zip(vocab.words, hits))
    assert hit["кошка"] and hit["молоко"] and hit["dog"] and hit["food"]  # Russian and English navec hits
    assert not hit["qzxwvplk"] and not hit[UNK]  # misses are learned from a random start
    from prodcat.data.tokens import default_navec_path, load_navec

    navec = load_navec(str(default_navec_path()))
    assert np.allclose(matrix[vocab.index["кошка"]], navec["кошка"])
    assert np.abs(matrix[vocab.index["qzxwvplk"]]).sum() > 0
    assert Vocab.build(docs, max_size=6).words == [PAD, UNK, BOS, EOS, "кошка", "dog"]


def test_coca_text_only_products_and_fold_resume(tiny, tmp_path):
    train = products(120)
    ids = train["id"].tolist()
    no_photo = set(ids[:5])
    write_photos(tiny, train, "train", skip=no_photo)
    write_photos(tiny, products(30, seed=1, labels=False, start_id=9000), "test", skip={9000, 9001})
    common = ["--data", tiny, "--config", config(tmp_path), "--workdir", tmp_path / "w"]

    r = invoke("train", "coca", "--fold", "0", *common)
    assert r.exit_code == 0, r.output
    assert "initialised from navec" in r.output and "fold 0: trained" in r.output
    fold0 = tmp_path / "w" / "models" / "tiny" / "coca" / "fold0"
    stage1 = tmp_path / "w" / "cache" / "tiny" / "coca-stage1"
    assert len(list(stage1.glob("*.pt"))) == 1
    assert not list(fold0.rglob("*.ckpt"))  # no pickled checkpoints in a model folder
    assert {"coca.pt", "head.pt", "vocab.json", "classes.npz", "coca.json"} <= {p.name for p in fold0.iterdir()}
    stats = json.loads((fold0 / "stats.json").read_text())
    assert stats["params"] > 0 and stats["stage1"]["steps"] > 0 and stats["stage1"]["cpu_s_per_step"] > 0

    r = invoke("train", "coca", *common)
    assert "fold 0: finished earlier, reused" in r.output and "all folds finished" in r.output

    out = tmp_path / "w" / "oof" / "tiny" / "coca"
    oof = TopK.load(out / "oof.npz")
    flagged = np.isin(oof.ids, list(no_photo))
    assert np.array_equal(oof.flags["text_only"], flagged)  # a product without a photo: text-only ...
    assert not oof.missing.any() and (oof.labels[:, 0] > 0).all()  # ... but still predicted
    y = train.set_index("id").loc[oof.ids, "category_id"].to_numpy()
    assert (oof.top1() == y).mean() > 0.6

    from prodcat.models.base import load_model  # test products: the saved fold models, as `predict` runs them

    test = with_paths(products(30, seed=1, labels=False, start_id=9000), tiny, "test")
    pred = load_model(fold0).predict(test)
    assert pred.flags["text_only"].tolist() == [i in (9000, 9001) for i in test["id"]] and not pred.missing.any()
    r = invoke("refit", "coca", *common)  # the full model: every product, the folds' settings
    assert r.exit_code == 0 and "[coca] full: trained on 120 products" in r.output, r.output
    full = tmp_path / "w" / "models" / "tiny" / "coca" / "full"
    assert_same(fresh_process_predict(full, test, tmp_path), load_model(full).predict(test))

    # an interrupted fold (no fold json) or a retrained one on the same rows resumes from stage 1's weights
    (out / "fold2.json").unlink()
    r = invoke("train", "coca", "--fold", "2", *common)
    assert "stage 1 reused" in r.output and "fold 2: trained" in r.output
    r = invoke("train", "coca", "--fold", "2", "--force", *common)
    assert "stage 1 reused" in r.output and "fold 2: trained" in r.output
    # other content (a photo replaced: new size and mtime): that photo is embedded again, stage 1 retrained
    photo = tiny / "images" / "train" / f"{ids[-1]}.jpg"
    Image.new("RGB", (30, 30), (0, 0, 0)).save(photo)
    r = invoke("train", "coca", "--fold", "2", *common)
    assert "1 photo(s) embedded" in r.output and "stage 1 reused" not in r.output and "fold 2: trained" in r.output
    assert len(list(stage1.glob("*.pt"))) == 5  # folds 0, 1, 2, the full model and fold 2 on the new content


def test_vit_encoder_and_joint_stage2(tiny, tmp_path):
    train = products(120)
    write_photos(tiny, train, "train", skip={train["id"].iloc[0]})
    write_photos(tiny, products(30, seed=1, labels=False, start_id=9000), "test")
    extra = ("    image_encoder: {type: vit, image_size: 32, patch: 8, dim: 32, depth: 1, heads: 2}\n"
             "    stage2: joint\n    stage2_epochs: 2\n")
    path = tmp_path / "vit.yaml"
    path.write_text(f"extends: {config(tmp_path)}\nmodels:\n  coca:\n" + extra)
    r = invoke("train", "coca", "--fold", "0", "--data", tiny, "--config", path, "--workdir", tmp_path / "w")
    assert r.exit_code == 0, r.output
    valid = TopK.load(tmp_path / "w" / "oof" / "tiny" / "coca" / "fold0.valid.npz")
    assert not valid.missing.any() and valid.flags["text_only"].sum() <= 1
    fold0 = tmp_path / "w" / "models" / "tiny" / "coca" / "fold0"
    stats = json.loads((fold0 / "stats.json").read_text())
    assert stats["stage2"]["mode"] == "joint"

    from prodcat.models.base import load_model  # the saved joint network (ViT included) predicts as the trained one
    from prodcat.training.run import Run

    frame = Run.open(tiny, path, tmp_path / "w").ds.train_frame()
    assert (fold0 / "joint.pt").exists() and not (fold0 / "coca.pt").exists()
    assert_same(load_model(fold0).predict(frame[frame["id"].isin(valid.ids)]).align(valid.ids), valid)


def test_coca_trained_timm_encoder_save_load(tmp_path):
    """The GPU configuration's image side (the timm backbone trained inside CoCa on photos), tiny and on a
    CPU: the whole network, backbone included, is saved and predicts as the trained one."""
    from prodcat.models.base import ModelEnv, load_model, save_model
    from prodcat.models.coca import CocaModel

    train, test = photo_frames(tmp_path / "d")
    extra = {"seq_len": 8, "dim": 16, "unimodal_depth": 1, "multimodal_depth": 1, "heads": 2, "dim_head": 8,
             "ff_mult": 2, "num_img_queries": 2, "batch_size": 32, "stage1_epochs": 1, "stage2_epochs": 1,
             "image_encoder": {"frozen": False, "image_size": 32}, "trainer": {"progress_bar": False}}
    params, text = model_params("coca", extra)
    fitted = CocaModel(params, ModelEnv(text=text, cache=None)).fit(train.iloc[:60], tmp_path / "fold0", 0)
    save_model(fitted, tmp_path / "saved", "coca", {})
    state = torch.load(tmp_path / "saved" / "coca.pt", weights_only=True)
    assert any(k.startswith("encoder.backbone.") for k in state)  # the trained backbone is saved
    here = fitted.predict(test)
    assert here.flags["text_only"].tolist() == [i == 9000 for i in test["id"]]
    assert_same(load_model(tmp_path / "saved").predict(test), here)


def test_coca_save_load_fresh_process(tmp_path):
    """fit -> save -> load_model in a new process -> predict: the same probabilities and text-only flags,
    bit for bit; the frozen backbone is not stored, its vocabulary is plain json."""
    from prodcat.models.base import ModelEnv, load_model, save_model
    from prodcat.models.coca import CocaModel

    train, test = photo_frames(tmp_path / "d")
    extra = {"seq_len": 12, "dim": 32, "unimodal_depth": 1, "multimodal_depth": 1, "heads": 2, "dim_head": 16,
             "ff_mult": 2, "num_img_queries": 4, "batch_size": 32, "stage1_epochs": 1, "stage2_epochs": 3,
             "image_encoder": {"image_size": 64, "token_grid": 2}, "trainer": {"progress_bar": False}}
    params, text = model_params("coca", extra)
    model = CocaModel(params, ModelEnv(text=text, cache=tmp_path / "cache"))
    model.prepare(train)
    fitted = model.fit(train, tmp_path / "fold0", 0)
    folder = tmp_path / "saved"
    save_model(fitted, folder, "coca", {})
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab[:4] == [PAD, UNK, BOS, EOS] and "milk" in vocab
    assert sum(f.stat().st_size for f in folder.iterdir()) < 3_000_000  # no backbone inside

    here = fitted.predict(test)
    assert here.flags["text_only"].tolist() == [i == 9000 for i in test["id"]] and not here.missing.any()
    assert_same(fresh_process_predict(folder, test, tmp_path), here)
    assert_same(load_model(folder).predict(train.iloc[:20]), fitted.predict(train.iloc[:20]))


def test_coca_net_shapes_and_tied_output():
    from prodcat.models.coca import CocaSettings
    from prodcat.models.nn.coca_net import CocaNet, TinyViT
    from prodcat.settings import complete

    small = {"dim": 24, "heads": 2, "dim_head": 8, "num_img_queries": 3, "unimodal_depth": 1, "multimodal_depth": 1}
    net = CocaNet(torch.randn(50, 300), 16, TinyViT(16, 8, 16, 1, 2), complete(CocaSettings, small))
    text = torch.randint(1, 50, (4, 7))
    text[:, -2:] = 0
    image = torch.randn(4, 3, 16, 16)
    loss = net.loss(text, image)
    loss.backward()
    assert torch.isfinite(loss) and net.coca.token_emb.weight.grad is not None
    feats = net.features(text, image, torch.tensor([True, False, True, True]))
    assert feats.shape == (4, 49) and not feats[1, 24:].any() and feats[0, -1] == 1
