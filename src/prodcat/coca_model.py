"""CoCa multimodal base model (lucidrains' coca-pytorch) on (photo, text) pairs, then a classifier.

Per fold:
1. Text: natasha lemmas -> vocabulary of the training rows -> token embedding initialised from navec
   (prodcat.tokens), factorised as navec (V x 300) followed by a learned 300 -> dim projection; CoCa's output
   layer stays tied to it.
2. Image side (`image_encoder.type`):
   - timm: a pretrained timm backbone's last feature map, average-pooled to a grid of tokens. Frozen (the CPU
     configuration): tokens come from the shared embedding cache (prodcat.vision); not frozen (GPU): the
     backbone is trained inside CoCa on augmented photos.
   - vit: a small ViT trained from scratch on the photos.
3. Stage 1: CoCa's contrastive + captioning loss on the training rows that have a photo.
4. Stage 2 (`stage2`): `mlp` - CoCa frozen, an MLP on [text embedding, image embedding, has-photo]; or
   `joint` - the same head trained together with CoCa with a classification loss.
   Products without a photo are predicted from the text side alone (image part zero, trained for with
   image dropout) and flagged `text_only`.
The stage-1 weights are saved in the fold's folder (stage1.pt) and reused when the fold is resumed after an
interruption; `--force` retrains them.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prodcat.trainer import (StepTimer, adamw_cosine, count_params, lightning, make_trainer, seed,  # noqa: I001
                             set_cpu_threads)
from prodcat.config import config_hash
from prodcat.cv import BaseModel, fold_done
from prodcat.probs import TopK
from prodcat.storage import write_json
from prodcat.tokens import Vocab, lemmas, navec_matrix
from prodcat.vision import BackboneSpec, cached_embeddings, no_images_reason, photo_index
from prodcat.image_model import robust_std

pl = lightning()


class CocaModel(BaseModel):
    name = "coca"

    def __init__(self, run, params):
        super().__init__(run, params)
        self._emb = None
        self._photos = None
        self._docs = None

    def skip_reason(self) -> str | None:
        return no_images_reason(self.run.ds, "CoCa, trained on photo-text pairs,")

    def settings(self) -> dict:
        text = self.run.cfg.get("text", {}) | self.params.get("text", {})
        return {"params": self.params, "text": text, "top_k": self.run.top_k, "seed": self.run.seed,
                "frozen_tokens": self._uses_cache}

    # -- inputs ----------------------------------------------------------------------------------------
    @property
    def enc(self) -> dict:
        return {"type": "timm", "backbone": "tf_efficientnet_lite0", "pretrained": True, "weights": "auto",
                "frozen": True, "image_size": 192, "token_grid": 3} | dict(self.params.get("image_encoder", {}))

    @property
    def _uses_cache(self) -> bool:
        return self.enc["type"] == "timm" and bool(self.enc["frozen"])

    def docs(self) -> pd.Series:
        """Lemmas of every product (first seq_len of them), indexed by id; computed once per process."""
        if self._docs is None:
            texts = self.run.texts(self.params.get("text"))
            limit = int(self.params.get("seq_len", 48))
            self._docs = pd.Series([lemmas(t, limit) for t in texts.tolist()], index=texts.index)
        return self._docs

    def image_inputs(self):
        """('tokens', Embeddings) for a frozen timm backbone, else ('pixels', PhotoIndex)."""
        if self._uses_cache:
            if self._emb is None:
                spec = BackboneSpec.from_config(self.enc)
                self._emb = cached_embeddings(self.run, spec, int(self.enc["image_size"]), int(self.enc["token_grid"]))
            return "tokens", self._emb
        if self._photos is None:
            self._photos = photo_index(self.run.ds)
            print(f"[coca] {self._photos.summary()}")
        return "pixels", self._photos

    def _pairs(self, frame: pd.DataFrame, vocab: Vocab, labels=None, train: bool = False) -> "PairData":
        seq_len = int(self.params.get("seq_len", 48))
        text = vocab.encode_many(self.docs().loc[frame["id"]].tolist(), seq_len)
        kind, src = self.image_inputs()
        if kind == "tokens":
            rows = src.rows(frame["id"])
            return PairData(text, src.usable[rows], labels, tokens=src.tokens[rows])
        where = {int(i): n for n, i in enumerate(src.ids.tolist())}
        rows = [where[int(i)] for i in frame["id"]]
        size = int(self.enc.get("image_size", 64))
        tf = self._transform(size, train)
        return PairData(text, src.usable[rows], labels, paths=[src.paths[r] for r in rows], transform=tf,
                        blank=(3, size, size))

    def _transform(self, size, train):
        from prodcat.vision import eval_transform, train_transform

        if self.enc["type"] == "vit":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            mean, std = self._timm_norm()
        return train_transform(size, mean, std) if train else eval_transform(size, mean, std)

    def _timm_norm(self):
        from prodcat.vision import import_timm

        timm = import_timm()
        cfg = timm.get_pretrained_cfg(self.enc["backbone"])
        cfg = cfg.to_dict() if cfg is not None else {}
        return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    # -- model -----------------------------------------------------------------------------------------
    def build(self, vocab: Vocab, fold: int):
        import torch

        matrix, hits = navec_matrix(vocab, self.params.get("navec") if self.params.get("navec", "auto") != "auto"
                                    else None, seed=self.run.seed + fold)
        if self.params.get("navec") == "none":
            hits[:] = False
        kind, src = self.image_inputs()
        if kind == "tokens":
            encoder, image_dim = None, src.tokens.shape[-1]
        elif self.enc["type"] == "vit":
            encoder = TinyViT(int(self.enc.get("image_size", 64)), int(self.enc.get("patch", 8)),
                              int(self.enc.get("dim", 192)), int(self.enc.get("depth", 4)), int(self.enc.get("heads", 3)))
            image_dim = encoder.dim
        else:
            from prodcat.vision import create_backbone

            encoder = TimmTokens(create_backbone(BackboneSpec.from_config(self.enc)))
            image_dim = encoder.dim
        net = CocaNet(torch.from_numpy(matrix), image_dim, encoder, self.params)
        return net, hits

    def fit_predict(self, fold, train, predict, workdir: Path):
        import torch

        forced = fold_done(self.run, self, fold)  # the runner calls a finished fold only with --force
        set_cpu_threads(self.params.get("trainer"))
        self.image_inputs()  # before seeding: embedding photos (first run) must not shift the fold's random state
        seed(self.run.seed + fold)
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.params
        vocab = Vocab.build(self.docs().loc[train["id"]].tolist(), int(cfg.get("vocab_size", 30000)),
                            int(cfg.get("min_count", 1)))
        net, hits = self.build(vocab, fold)
        stats = {"vocab": len(vocab), "navec_hits": int(hits.sum()), "params": count_params(net)}
        print(f"[coca] fold {fold}: vocabulary {len(vocab)} lemmas, {int(hits.sum())} initialised from navec; "
              f"{stats['params'] / 1e6:.2f}M parameters")
        y = train["category_id"].to_numpy()
        classes = np.unique(y)
        target = np.searchsorted(classes, y)
        data = self._pairs(train, vocab, target, train=True)

        # stage 1: CoCa's own losses on the rows with a photo
        key = self._stage1_key(train, vocab)
        ckpt = workdir / "stage1.pt"
        meta = workdir / "stage1.json"
        if not forced and ckpt.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
            net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
            print(f"[coca] fold {fold}: stage 1 reused from {ckpt}")
            stats["stage1"] = json.loads(meta.read_text()).get("stats", {})
        else:
            t0 = time.time()
            stats["stage1"] = self._stage1(net, data.subset(data.has), workdir) | {"seconds": round(time.time() - t0, 1)}
            torch.save(net.state_dict(), ckpt)
            write_json({"key": key, "stats": stats["stage1"]}, meta)

        # stage 2: classifier
        t0 = time.time()
        mode = cfg.get("stage2", "mlp")
        frames = {s: self._pairs(f, vocab) for s, f in predict.items()}
        if mode == "mlp":
            head, s2 = self._stage2_mlp(net, data, len(classes), workdir)
            proba = {s: head.predict_proba(self._embed(net, d)) for s, d in frames.items()}
        elif mode == "joint":
            joint, s2 = self._stage2_joint(net, data, len(classes), workdir)
            proba = {s: joint.predict_proba(d, int(cfg.get("batch_size", 64))) for s, d in frames.items()}
        else:
            raise ValueError(f"models.coca.stage2 must be mlp or joint (got {mode!r})")
        stats["stage2"] = s2 | {"mode": mode, "seconds": round(time.time() - t0, 1)}
        write_json(stats, workdir / "stats.json")
        return {s: TopK.from_dense(predict[s]["id"].to_numpy(), proba[s], classes, self.run.top_k,
                                   flags={"text_only": ~frames[s].has}) for s in predict}

    def _stage1_key(self, train, vocab) -> str:
        h = hashlib.sha1(np.sort(train["id"].to_numpy()).tobytes())
        h.update("\n".join(vocab.words).encode())
        return h.hexdigest()[:12] + "-" + config_hash(self.settings()) + "-" + self.run.ds.fingerprint

    def _stage1(self, net, data, workdir) -> dict:
        cfg = self.params
        epochs = int(cfg.get("stage1_epochs", 8))
        if epochs <= 0 or len(data) < 2:
            return {"steps": 0}
        loader = data.loader(int(cfg.get("batch_size", 64)), shuffle=True, drop_last=len(data) > 2 * int(
            cfg.get("batch_size", 64)), workers=int(cfg.get("num_workers", 0)))
        module = Stage1Module(net, cfg)
        module.total_steps = epochs * len(loader)
        timer = StepTimer()
        trainer = make_trainer(cfg.get("trainer"), workdir, epochs, "stage1", callbacks=[timer],
                               gradient_clip_val=float(cfg.get("grad_clip", 1.0)))
        trainer.fit(module, loader)
        return timer.summary() | {"final_loss": round(float(trainer.callback_metrics.get("loss", float("nan"))), 4)}

    def _embed(self, net, data) -> np.ndarray:
        """[text embedding, image embedding * has, has] per row, CoCa in eval mode."""
        import torch

        net.eval()
        out = []
        with torch.inference_mode():
            for batch in data.loader(int(self.params.get("batch_size", 64)) * 2, workers=int(
                    self.params.get("num_workers", 0))):
                out.append(net.features(batch["text"], batch["image"], batch["has"]).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2 * net.dim + 1), np.float32)

    def _stage2_mlp(self, net, data, n_classes, workdir):
        import torch

        feats = torch.from_numpy(self._embed(net, data))
        head = PairHead(net.dim, n_classes, self.params, mean=feats.mean(0), std=robust_std(feats))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(feats, torch.from_numpy(data.labels)),
                                             batch_size=int(self.params.get("stage2_batch_size", 128)), shuffle=True)
        epochs = int(self.params.get("stage2_epochs", 25))
        head.total_steps = epochs * len(loader)
        timer = StepTimer()
        trainer = make_trainer(self.params.get("trainer"), workdir, epochs, "stage2", callbacks=[timer])
        trainer.fit(head, loader)
        return head.eval(), timer.summary()

    def _stage2_joint(self, net, data, n_classes, workdir):
        cfg = self.params
        module = JointModule(net, n_classes, cfg)
        loader = data.loader(int(cfg.get("batch_size", 64)), shuffle=True, workers=int(cfg.get("num_workers", 0)))
        epochs = int(cfg.get("stage2_epochs", 6))
        module.total_steps = epochs * len(loader)
        timer = StepTimer()
        trainer = make_trainer(cfg.get("trainer"), workdir, epochs, "stage2", callbacks=[timer],
                               gradient_clip_val=float(cfg.get("grad_clip", 1.0)))
        trainer.fit(module, loader)
        return module.eval(), timer.summary()


# -- data ------------------------------------------------------------------------------------------------
class PairData:
    """Token ids, image input (cached tokens, or photo paths + transform) and has-photo flags per row."""

    def __init__(self, text, has, labels=None, tokens=None, paths=None, transform=None, blank=None):
        self.text, self.has = text, np.asarray(has, bool)
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        self.tokens, self.paths, self.transform, self.blank = tokens, paths, transform, blank

    def __len__(self):
        return len(self.text)

    def subset(self, mask) -> "PairData":
        idx = np.flatnonzero(mask)
        return PairData(self.text[idx], self.has[idx], None if self.labels is None else self.labels[idx],
                        None if self.tokens is None else self.tokens[idx],
                        None if self.paths is None else [self.paths[i] for i in idx], self.transform, self.blank)

    def __getitem__(self, i):
        import torch

        from prodcat.vision import load_image

        has = bool(self.has[i])
        if self.tokens is not None:
            image = torch.from_numpy(self.tokens[i])
        else:
            im = load_image(self.paths[i]) if has else None
            has = im is not None
            image = self.transform(im) if im is not None else torch.zeros(self.blank)
        item = {"text": torch.from_numpy(self.text[i]), "image": image, "has": torch.tensor(has)}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[i])
        return item

    def loader(self, batch_size, shuffle=False, drop_last=False, workers=0):
        import torch

        return torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                           num_workers=workers, persistent_workers=workers > 0)


# -- networks --------------------------------------------------------------------------------------------
def _nn():
    from torch import nn

    return nn


class NavecEmbedding(_nn().Module):
    """Token embedding = navec-initialised (V x 300) table, then a learned 300 -> dim projection."""

    def __init__(self, matrix, dim):
        nn = _nn()
        super().__init__()
        self.weight = nn.Parameter(matrix.float().clone())
        self.proj = nn.Linear(matrix.shape[1], dim, bias=False)

    def forward(self, ids):
        import torch.nn.functional as F

        return self.proj(F.embedding(ids, self.weight, padding_idx=0))


class TiedOutput(_nn().Module):
    """CoCa's caption logits, tied to the factorised token embedding (as CoCa ties them)."""

    def __init__(self, emb: NavecEmbedding):
        super().__init__()
        self.emb = [emb]  # a plain list: the embedding is registered once, in CoCa.token_emb

    def forward(self, x):
        import torch.nn.functional as F

        emb = self.emb[0]
        return F.linear(x @ emb.proj.weight, emb.weight)


class TimmTokens(_nn().Module):
    """A timm backbone's last feature map as a sequence of image tokens (b, h*w, C)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.num_features

    def forward(self, x):
        return self.backbone.forward_features(x).flatten(2).transpose(1, 2)


class TinyViT(_nn().Module):
    """A small ViT trained from scratch: patch embedding, learned positions, pre-norm encoder layers."""

    def __init__(self, image_size=64, patch=8, dim=192, depth=4, heads=3):
        import torch

        nn = _nn()
        super().__init__()
        self.dim = dim
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.encoder(x))


class CocaNet(_nn().Module):
    """coca_pytorch.CoCa with the navec token embedding and an optional image encoder in front."""

    def __init__(self, matrix, image_dim, encoder, cfg):
        import torch.distributed as dist
        from coca_pytorch import CoCa

        super().__init__()
        dim = int(cfg.get("dim", 256))
        self.dim = dim
        self.coca = CoCa(dim=dim, num_tokens=2, unimodal_depth=int(cfg.get("unimodal_depth", 2)),
                         multimodal_depth=int(cfg.get("multimodal_depth", 2)), dim_latents=int(cfg.get("dim_latents", dim)),
                         image_dim=image_dim, num_img_queries=int(cfg.get("num_img_queries", 16)),
                         dim_head=int(cfg.get("dim_head", 64)), heads=int(cfg.get("heads", 4)),
                         ff_mult=int(cfg.get("ff_mult", 4)), caption_loss_weight=float(cfg.get("caption_loss_weight", 1.0)),
                         contrastive_loss_weight=float(cfg.get("contrastive_loss_weight", 1.0)), pad_id=0)
        self.coca.token_emb = NavecEmbedding(matrix, dim)
        n_tokens = matrix.shape[0]
        self.coca.to_logits[-1] = (TiedOutput(self.coca.token_emb) if cfg.get("tied_output", True)
                                   else _nn().Linear(dim, n_tokens, bias=False))
        self.coca.is_distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.encoder = encoder

    def image_tokens(self, image):
        return self.encoder(image) if self.encoder is not None else image

    def loss(self, text, image):
        return self.coca(text, image_tokens=self.image_tokens(image), return_loss=True)

    def features(self, text, image, has):
        """[text CLS embedding, image CLS embedding (zero without a photo), has-photo] per row."""
        text_emb, img_emb = self.coca(text, image_tokens=self.image_tokens(image), return_embeddings=True)
        has = has.to(img_emb.dtype).unsqueeze(1)
        return __import__("torch").cat([text_emb, img_emb * has, has], dim=1)


class Stage1Module(pl.LightningModule):
    def __init__(self, net, params):
        super().__init__()
        self.net, self.params, self.total_steps = net, params, 1

    def on_fit_start(self):
        import torch.distributed as dist

        self.net.coca.is_distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def training_step(self, batch, _):
        loss = self.net.loss(batch["text"], batch["image"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(), "lr": float(self.params.get("lr", 1e-3))}])


def _head(in_dim, n_classes, params):
    nn = _nn()
    hidden = int(params.get("head", {}).get("hidden", 512))
    drop = float(params.get("head", {}).get("dropout", 0.3))
    return nn.Sequential(nn.Dropout(float(params.get("head", {}).get("input_dropout", 0.1))), nn.Linear(in_dim, hidden),
                         nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, n_classes))


def _drop_image(feats, dim, p, training):
    """Image dropout: with probability p a row is shown as if it had no photo (trains the text-only path)."""
    import torch

    if not training or p <= 0:
        return feats
    drop = torch.rand(feats.shape[0], device=feats.device) < p
    feats = feats.clone()
    feats[drop, dim:] = 0.0
    return feats


class PairHead(pl.LightningModule):
    """Stage 2 (mlp): MLP on frozen CoCa features [text, image * has, has]."""

    def __init__(self, dim, n_classes, params, mean=None, std=None):
        import torch

        super().__init__()
        self.dim, self.params, self.total_steps = dim, params, 1
        self.register_buffer("mean", mean.float() if mean is not None else torch.zeros(2 * dim + 1))
        self.register_buffer("std", std.float() if std is not None else torch.ones(2 * dim + 1))
        self.net = _head(2 * dim + 1, n_classes, params)
        self.loss = _nn().CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.1)))

    def forward(self, feats):
        feats = _drop_image(feats, self.dim, float(self.params.get("image_dropout", 0.15)), self.training)
        # a missing image part stays exactly zero after standardising, as in training
        z = (feats - self.mean) / self.std
        z[:, self.dim:] = z[:, self.dim:] * feats[:, -1:].gt(0)
        return self.net(z)

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        import torch

        self.eval()
        with torch.inference_mode():
            return self(torch.from_numpy(feats)).softmax(-1).numpy()

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(),
                                                 "lr": float(self.params.get("head_lr", 2e-3))}])


class JointModule(pl.LightningModule):
    """Stage 2 (joint): CoCa and the classifier trained together with a classification loss (plus CoCa's own
    loss on the rows with a photo, weighted by `joint_coca_weight`)."""

    def __init__(self, net, n_classes, params):
        super().__init__()
        self.net, self.params, self.total_steps = net, params, 1
        self.head = _head(2 * net.dim + 1, n_classes, params)
        self.norm = _nn().LayerNorm(2 * net.dim + 1)
        self.loss = _nn().CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.1)))

    def forward(self, text, image, has):
        feats = self.net.features(text, image, has)
        feats = _drop_image(feats, self.net.dim, float(self.params.get("image_dropout", 0.15)), self.training)
        return self.head(self.norm(feats))

    def training_step(self, batch, _):
        loss = self.loss(self(batch["text"], batch["image"], batch["has"]), batch["label"])
        w = float(self.params.get("joint_coca_weight", 0.0))
        if w > 0 and int(batch["has"].sum()) > 1:
            h = batch["has"]
            loss = loss + w * self.net.loss(batch["text"][h], batch["image"][h])
        self.log("loss", loss, prog_bar=True)
        return loss

    def predict_proba(self, data: PairData, batch_size: int) -> np.ndarray:
        import torch

        self.eval()
        out = []
        with torch.inference_mode():
            for batch in data.loader(batch_size * 2):
                out.append(self(batch["text"], batch["image"], batch["has"]).float().softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.head[-1].out_features), np.float32)

    def configure_optimizers(self):
        lr = float(self.params.get("lr", 1e-3))
        return adamw_cosine(self, self.params, [
            {"params": self.net.parameters(), "lr": lr * float(self.params.get("joint_coca_lr_mult", 0.3))},
            {"params": list(self.head.parameters()) + list(self.norm.parameters()), "lr": lr}])
