"""CoCa multimodal base model (lucidrains' coca-pytorch) on (photo, text) pairs, then a classifier.

Per fold:
1. Text: natasha lemmas -> vocabulary of the training rows -> token embedding initialised from navec
   (prodcat.data.tokens), factorised as navec (V x 300) followed by a learned 300 -> dim projection; CoCa's output
   layer stays tied to it.
2. Image side (`image_encoder.type`), photos from the frames' `image_path` column:
   - timm: a pretrained timm backbone's last feature map, average-pooled to a grid of tokens. Frozen (the CPU
     configuration): tokens come from the shared content-keyed embedding cache (prodcat.models.nn.vision); not frozen
     (GPU): the backbone is trained inside CoCa on augmented photos.
   - vit: a small ViT trained from scratch on the photos.
3. Stage 1: CoCa's contrastive + captioning loss on the training rows that have a photo.
4. Stage 2 (`stage2`): `mlp` - CoCa frozen, an MLP on [text embedding, image embedding, has-photo]; or
   `joint` - the same head trained together with CoCa with a classification loss.
   Products without a photo are predicted from the text side alone (image part zero, trained for with
   image dropout) and flagged `text_only`.
The stage-1 weights are kept in the cache folder (cache/coca-stage1/<key>.pt + .json), keyed by the
training rows' content (texts, labels, photos by size and mtime), the settings, the fold's seed and the
backbone weights: a fold interrupted in stage 2, or retrained on the same rows and settings, starts from
them (delete cache/coca-stage1/ to retrain stage 1 too).

Saved model (fold folder): coca.json (sizes, image encoder, weights identity), vocab.json (the lemma
list), classes.npz and state dicts: coca.pt + head.pt (stage2 mlp) or joint.pt (stage2 joint). A frozen
timm backbone is not stored: it is rebuilt from the same weights source (checked on load).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from prodcat.data.tokens import Vocab, lemmas_many, navec_matrix
from prodcat.distributed import is_main_process
from prodcat.errors import DataError
from prodcat.models.base import BaseModel, child_name
from prodcat.models.nn.heads import FeatureHead, mlp, robust_std
from prodcat.models.nn.trainer import (  # noqa: I001
    StepTimer,
    adamw_cosine,
    count_params,
    cpu_threads,
    lightning,
    load_state,
    make_trainer,
    process_batch,
    save_state,
    seed,
)
from prodcat.models.nn.vision import (
    BackboneSpec,
    WeightsError,
    check_photos,
    no_photos_reason,
    photo_embeddings,
    photo_paths,
)
from prodcat.probs import TopK
from prodcat.settings import config_hash
from prodcat.storage import atomic_path, write_json, write_npz

pl = lightning()
META = "coca.json"


class CocaModel(BaseModel):
    name = "coca"
    distributed = True  # Lightning: every DDP process trains the fold
    uses_photos = True  # the runner lists the training rows' missing and unreadable photos

    def __init__(self, params, env):
        super().__init__(params, env)
        self.vocab: Vocab | None = None
        self.classes: np.ndarray | None = None
        self.net = None  # CocaNet
        self.head = None  # PairHead (stage2 mlp) or JointModule (joint, holds the net)

    def skip_reason(self, train) -> str | None:
        return no_photos_reason(train, "CoCa, trained on photo-text pairs,")

    def settings(self) -> dict:
        return super().settings() | {"frozen_tokens": self._uses_cache}

    # -- inputs ----------------------------------------------------------------------------------------
    @property
    def enc(self) -> dict:
        return dict(self.params["image_encoder"])

    @property
    def _uses_cache(self) -> bool:
        return self.enc["type"] == "timm" and bool(self.enc["frozen"])

    @property
    def stage2(self) -> str:
        mode = self.params["stage2"]
        if mode not in ("mlp", "joint"):
            raise ValueError(f"models.coca.stage2 must be mlp or joint (got {mode!r})")
        return mode

    def _threads(self):
        return cpu_threads(self.params["trainer"])

    def docs(self, frame) -> list[list[str]]:
        """Lemmas of each product's text (first seq_len of them), in row order; remembered per process."""
        texts = self.env.texts(frame, self.params["text"])
        return lemmas_many(texts.tolist(), int(self.params["seq_len"]))

    def image_inputs(self, frame):
        """('tokens', Embeddings) for a frozen timm backbone, else ('pixels', Photos)."""
        paths = photo_paths(frame)
        if self._uses_cache:
            spec = BackboneSpec.from_config(self.enc)
            return "tokens", photo_embeddings(paths, spec, int(self.enc["image_size"]), int(self.enc["token_grid"]),
                                              batch_size=int(self.enc["embed_batch_size"]),
                                              cache=self.env.cache)
        return "pixels", check_photos(paths)

    def _pairs(self, frame, vocab: Vocab, labels=None, train: bool = False, inputs=None) -> "PairData":
        seq_len = int(self.params["seq_len"])
        text = vocab.encode_many(self.docs(frame), seq_len)
        kind, src = inputs or self.image_inputs(frame)
        if kind == "tokens":
            return PairData(text, src.usable, labels, tokens=src.tokens)
        size = int(self.enc["image_size"])
        return PairData(text, src.usable, labels, paths=src.paths, transform=self._transform(size, train),
                        blank=(3, size, size))

    def _transform(self, size, train):
        from prodcat.models.nn.vision import eval_transform, train_transform

        if self.enc["type"] == "vit":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        else:
            mean, std = self._timm_norm()
        return train_transform(size, mean, std) if train else eval_transform(size, mean, std)

    def _timm_norm(self):
        from prodcat.models.nn.vision import import_timm

        timm = import_timm()
        cfg = timm.get_pretrained_cfg(self.enc["backbone"])
        cfg = cfg.to_dict() if cfg is not None else {}
        return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def _weights_id(self) -> str | None:
        """The frozen backbone's weights (name and file name/size) whose cached tokens CoCa reads."""
        return BackboneSpec.from_config(self.enc).cache_key() if self._uses_cache else None

    # -- model -----------------------------------------------------------------------------------------
    def _encoder(self, image_dim: int | None, pretrained: bool = True):
        """(image encoder or None, its token width). `pretrained=False`: random weights for a network whose
        trained state is loaded next."""
        if self._uses_cache:
            return None, image_dim
        if self.enc["type"] == "vit":
            encoder = TinyViT(int(self.enc["image_size"]), int(self.enc["patch"]),
                              int(self.enc["dim"]), int(self.enc["depth"]), int(self.enc["heads"]))
            return encoder, encoder.dim
        from prodcat.models.nn.vision import create_backbone

        spec = BackboneSpec.from_config(self.enc)
        encoder = TimmTokens(create_backbone(spec if pretrained else BackboneSpec(spec.name, pretrained=False)))
        return encoder, encoder.dim

    def build(self, vocab: Vocab, fold: int | None, inputs):
        import torch

        navec = self.params["navec"]
        matrix, hits = navec_matrix(vocab, None if navec == "auto" else navec, seed=self.child_seed(fold))
        kind, src = inputs
        encoder, image_dim = self._encoder(src.tokens.shape[-1] if kind == "tokens" else None)
        net = CocaNet(torch.from_numpy(matrix), image_dim, encoder, self.params)
        return net, hits

    # -- fit -------------------------------------------------------------------------------------------
    def prepare(self, train) -> None:
        """Lemmas and (frozen backbone) photo tokens of every training row, once before the folds."""
        with self._threads():
            kind, src = self.image_inputs(train)
            self.docs(train)
        print(f"[coca] {src.summary()}")

    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        with self._threads():
            inputs = self.image_inputs(train)  # before seeding: embedding photos must not shift the random state
            if not inputs[1].usable.any():
                raise DataError(f"[{self.name}] {child_name(fold)}: no usable photo among the training rows")
            seed(self.child_seed(fold))
            self._train(train, workdir, fold, inputs)

    def _train(self, train, workdir: Path, fold: int | None, inputs) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.params
        vocab = Vocab.build(self.docs(train), int(cfg["vocab_size"]), int(cfg["min_count"]))
        net, hits = self.build(vocab, fold, inputs)
        stats = {"vocab": len(vocab), "navec_hits": int(hits.sum()), "params": count_params(net)}
        print(f"[coca] {child_name(fold)}: vocabulary {len(vocab)} lemmas, {int(hits.sum())} initialised from navec; "
              f"{stats['params'] / 1e6:.2f}M parameters")
        y = train["category_id"].to_numpy()
        classes = np.unique(y)
        data = self._pairs(train, vocab, np.searchsorted(classes, y), train=True, inputs=inputs)

        # stage 1: CoCa's own losses on the rows with a photo (reused from the cache for the same content)
        ckpt = self._stage1_path(train, vocab, fold)
        meta = ckpt.with_suffix(".json") if ckpt is not None else None
        if ckpt is not None and ckpt.exists() and meta.exists():
            load_state(net, ckpt)
            print(f"[coca] {child_name(fold)}: stage 1 reused from {ckpt}")
            stats["stage1"] = json.loads(meta.read_text()).get("stats", {})
        else:
            t0 = time.time()
            stats["stage1"] = self._stage1(net, data.subset(data.has), workdir) | {"seconds": round(time.time() - t0, 1)}
            if ckpt is not None and is_main_process():
                save_state(net, ckpt)
                write_json({"stats": stats["stage1"], "fold": fold}, meta)

        # stage 2: classifier
        t0 = time.time()
        if self.stage2 == "mlp":
            head, s2 = self._stage2_mlp(net, data, len(classes), workdir)
        else:
            head, s2 = self._stage2_joint(net, data, len(classes), workdir)
        stats["stage2"] = s2 | {"mode": self.stage2, "seconds": round(time.time() - t0, 1)}
        if is_main_process():
            write_json(stats, workdir / "stats.json")
        self.vocab, self.classes, self.net, self.head = vocab, classes, net.eval(), head.eval()

    def _stage1_path(self, train, vocab: Vocab, fold: int | None) -> Path | None:
        """Where this fold's stage-1 weights are cached: keyed by the training rows' content, the vocabulary,
        the settings, the fold's seed and the backbone weights (None without a cache folder)."""
        if self.env.cache is None:
            return None
        from prodcat.data.dataset import content_hash

        h = hashlib.sha1("\n".join(vocab.words).encode())
        import pandas as pd

        rows = train.assign(image_path=pd.Series(photo_paths(train), index=train.index, dtype=object))
        h.update(f"{content_hash(rows)}|{config_hash(self.settings())}|{self.child_seed(fold)}|"
                 f"{BackboneSpec.from_config(self.enc).cache_key() if self.enc['type'] == 'timm' else 'vit'}".encode())
        return Path(self.env.cache) / "coca-stage1" / f"{h.hexdigest()[:16]}.pt"

    def _stage1(self, net, data, workdir) -> dict:
        cfg = self.params
        epochs = int(cfg["stage1_epochs"])
        if epochs <= 0 or len(data) < 2:
            return {"steps": 0}
        loader = data.loader(process_batch(cfg["batch_size"], cfg["trainer"]), shuffle=True,
                             drop_last=len(data) > 2 * int(cfg["batch_size"]), workers=int(cfg["num_workers"]))
        module = Stage1Module(net, cfg)
        timer = StepTimer()
        trainer = make_trainer(cfg["trainer"], workdir, epochs, "stage1", callbacks=[timer],
                               gradient_clip_val=float(cfg["grad_clip"]))
        trainer.fit(module, loader)
        return timer.summary() | {"final_loss": round(float(trainer.callback_metrics.get("loss", float("nan"))), 4)}

    def _embed(self, net, data) -> np.ndarray:
        """[text embedding, image embedding * has, has] per row, CoCa in eval mode."""
        import torch

        from prodcat.models.nn.trainer import device_for

        device = device_for(self.params["trainer"])
        net = net.to(device).eval()
        out = []
        with torch.inference_mode():
            for batch in data.loader(int(self.params["batch_size"]) * 2, workers=int(
                    self.params["num_workers"])):
                batch = {k: v.to(device) for k, v in batch.items()}
                out.append(net.features(batch["text"], batch["image"], batch["has"]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2 * net.dim + 1), np.float32)

    def _stage2_mlp(self, net, data, n_classes, workdir):
        import torch

        feats = torch.from_numpy(self._embed(net, data))
        net.cpu()
        head = PairHead(net.dim, n_classes, self.params, mean=feats.mean(0), std=robust_std(feats))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(feats, torch.from_numpy(data.labels)),
                                             batch_size=process_batch(self.params["stage2_batch_size"],
                                                                      self.params["trainer"]), shuffle=True)
        epochs = int(self.params["stage2_epochs"])
        timer = StepTimer()
        trainer = make_trainer(self.params["trainer"], workdir, epochs, "stage2", callbacks=[timer])
        trainer.fit(head, loader)
        return head.cpu().eval(), timer.summary()

    def _stage2_joint(self, net, data, n_classes, workdir):
        cfg = self.params
        module = JointModule(net, n_classes, cfg)
        loader = data.loader(process_batch(cfg["batch_size"], cfg["trainer"]), shuffle=True,
                             workers=int(cfg["num_workers"]))
        epochs = int(cfg["stage2_epochs"])
        timer = StepTimer()
        trainer = make_trainer(cfg["trainer"], workdir, epochs, "stage2", callbacks=[timer],
                               gradient_clip_val=float(cfg["grad_clip"]))
        trainer.fit(module, loader)
        return module.cpu().eval(), timer.summary()

    # -- predict ---------------------------------------------------------------------------------------
    def predict(self, frame) -> TopK:
        """Class probabilities of every product; those without a usable photo from the text side alone
        (flag `text_only`)."""
        with self._threads():
            data = self._pairs(frame, self.vocab)
            if self.stage2 == "mlp":
                proba = self.head.predict_proba(self._embed(self.net, data))
            else:
                proba = self.head.predict_proba(data, int(self.params["batch_size"]),
                                                self._device())
        return TopK.from_dense(frame["id"].to_numpy(), proba, self.classes, self.env.top_k,
                               flags={"text_only": ~data.has})

    def _device(self):
        from prodcat.models.nn.trainer import device_for

        return device_for(self.params["trainer"])

    # -- save / load -----------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        emb = self.net.coca.token_emb.weight
        write_json({"stage2": self.stage2, "vocab": len(self.vocab), "navec_dim": int(emb.shape[1]),
                    "image_dim": int(self.net.image_dim),
                    "image_encoder": self.enc, "weights_id": self._weights_id(), "classes": len(self.classes)},
                   folder / META)
        with atomic_path(folder / "vocab.json") as tmp:
            tmp.write_text(json.dumps(self.vocab.words, ensure_ascii=False), encoding="utf-8")
        write_npz({"classes": self.classes}, folder / "classes.npz")
        if self.stage2 == "mlp":
            save_state(self.net, folder / "coca.pt")
            save_state(self.head, folder / "head.pt")
        else:
            save_state(self.head, folder / "joint.pt")  # the joint module holds the CoCa network

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "CocaModel":
        import torch

        meta = json.loads((folder / META).read_text())
        model = cls(params, env)
        if model._uses_cache:
            now = model._weights_id()  # raises WeightsError when the weights source is gone
            if now != meta["weights_id"]:
                raise WeightsError(f"{folder}: CoCa was trained on {meta['weights_id']} photo tokens, but the "
                                   f"backbone weights are now {now}: retrain the CoCa model")
        model.vocab = Vocab(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
        with np.load(folder / "classes.npz") as z:
            model.classes = z["classes"]
        encoder, image_dim = model._encoder(meta["image_dim"], pretrained=False)
        net = CocaNet(torch.zeros(meta["vocab"], meta["navec_dim"]), image_dim, encoder, params)
        if meta["stage2"] == "mlp":
            model.net = load_state(net, folder / "coca.pt").eval()
            model.head = load_state(PairHead(net.dim, len(model.classes), params), folder / "head.pt").eval()
        else:
            model.head = load_state(JointModule(net, len(model.classes), params), folder / "joint.pt").eval()
            model.net = model.head.net
        return model


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

        from prodcat.models.nn.vision import photo_tensor

        has = bool(self.has[i])
        if self.tokens is not None:
            image = torch.from_numpy(self.tokens[i]).float()  # stored as float16
        else:
            x = photo_tensor(self.paths[i], self.transform) if has else None
            has = x is not None
            image = x if x is not None else torch.zeros(self.blank)
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
        from coca_pytorch import CoCa

        super().__init__()
        dim = int(cfg["dim"])
        self.dim = dim
        self.image_dim = image_dim  # width of the image tokens (saved with the model)
        self.coca = CoCa(dim=dim, num_tokens=2, unimodal_depth=int(cfg["unimodal_depth"]),
                         multimodal_depth=int(cfg["multimodal_depth"]), dim_latents=int((cfg["dim_latents"] or dim)),
                         image_dim=image_dim, num_img_queries=int(cfg["num_img_queries"]),
                         dim_head=int(cfg["dim_head"]), heads=int(cfg["heads"]),
                         ff_mult=int(cfg["ff_mult"]), caption_loss_weight=float(cfg["caption_loss_weight"]),
                         contrastive_loss_weight=float(cfg["contrastive_loss_weight"]), pad_id=0)
        self.coca.token_emb = NavecEmbedding(matrix, dim)
        n_tokens = matrix.shape[0]
        self.coca.to_logits[-1] = (TiedOutput(self.coca.token_emb) if cfg["tied_output"]
                                   else _nn().Linear(dim, n_tokens, bias=False))
        self.coca.is_distributed = False  # its distributed branch mislabels the gathered batch: see `loss`
        self.encoder = encoder

    def image_tokens(self, image):
        return self.encoder(image) if self.encoder is not None else image

    def loss(self, text, image):
        """CoCa's caption + contrastive loss. Under DDP the contrastive term spans the batch gathered from
        every process (coca-pytorch's own distributed branch labels the gathered similarity matrix with the
        local batch's indices, which fails as soon as there are two processes)."""
        import torch
        import torch.distributed as dist

        coca = self.coca
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return coca(text, image_tokens=self.image_tokens(image), return_loss=True)
        from coca_pytorch.coca_pytorch import all_gather

        ce = torch.nn.functional.cross_entropy
        text, labels = text[:, :-1], text[:, 1:]
        text_embeds, text_tokens = coca.embed_text(text)
        image_embeds, image_tokens = coca.embed_image(image_tokens=self.image_tokens(image))
        for attn_ff, cross_attn in coca.multimodal_layers:
            text_tokens = cross_attn(attn_ff(text_tokens), image_tokens)
        caption = ce(coca.to_logits(text_tokens).transpose(1, 2), labels, ignore_index=coca.pad_id)
        latents = all_gather(torch.stack((coca.text_to_latents(text_embeds), coca.img_to_latents(image_embeds)), 1))
        text_latents, image_latents = latents.unbind(dim=1)
        # Every process computes the loss of the whole gathered batch, but its gradient reaches only its own
        # rows' latents, and DDP averages the processes' gradients: the rows' gradient is scaled back up by
        # the number of processes W. The temperature sees the whole loss in every process: its gradient is
        # scaled down by W first, so that it is exact too. The loss's value is unchanged.
        w = dist.get_world_size()
        temperature = coca.temperature / w + coca.temperature.detach() * (1 - 1 / w)
        sim = text_latents @ image_latents.t() * temperature.exp()
        target = torch.arange(sim.shape[0], device=sim.device)
        contrastive = (ce(sim, target) + ce(sim.t(), target)) * 0.5
        contrastive = contrastive * w - (contrastive * (w - 1)).detach()
        return caption * coca.caption_loss_weight + contrastive * coca.contrastive_loss_weight

    def features(self, text, image, has):
        """[text CLS embedding, image CLS embedding (zero without a photo), has-photo] per row."""
        text_emb, img_emb = self.coca(text, image_tokens=self.image_tokens(image), return_embeddings=True)
        has = has.to(img_emb.dtype).unsqueeze(1)
        return __import__("torch").cat([text_emb, img_emb * has, has], dim=1)


class Stage1Module(pl.LightningModule):
    def __init__(self, net, params):
        super().__init__()
        self.net, self.params = net, params

    def training_step(self, batch, _):
        loss = self.net.loss(batch["text"], batch["image"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(), "lr": float(self.params["lr"])}])


def _drop_image(feats, dim, p, training):
    """Image dropout: with probability p a row is shown as if it had no photo (trains the text-only path)."""
    import torch

    if not training or p <= 0:
        return feats
    drop = torch.rand(feats.shape[0], device=feats.device) < p
    feats = feats.clone()
    feats[drop, dim:] = 0.0
    return feats


class PairHead(FeatureHead):
    """Stage 2 (mlp): the shared feature head on frozen CoCa features [text, image * has, has], with image
    dropout (trains the text-only path)."""

    def __init__(self, dim, n_classes, params, mean=None, std=None):
        super().__init__(2 * dim + 1, n_classes, params, mean, std, lr_key="head_lr")
        self.dim = dim

    def prepare(self, feats, z):
        keep = _drop_image(feats, self.dim, float(self.params["image_dropout"]), self.training)
        # a missing image part stays exactly zero after standardising, as in training
        z = (keep - self.mean) / self.std
        z[:, self.dim:] = z[:, self.dim:] * keep[:, -1:].gt(0)
        return z


class JointModule(pl.LightningModule):
    """Stage 2 (joint): CoCa and the classifier trained together with a classification loss (plus CoCa's own
    loss on the rows with a photo, weighted by `joint_coca_weight`)."""

    def __init__(self, net, n_classes, params):
        super().__init__()
        self.net, self.params = net, params
        self.head = mlp(2 * net.dim + 1, n_classes, params["head"])
        self.norm = _nn().LayerNorm(2 * net.dim + 1)
        self.loss = _nn().CrossEntropyLoss(label_smoothing=float(params["label_smoothing"]))
        if float(params["joint_coca_weight"]) <= 0:  # the caption / contrastive layers get no gradient at all:
            coca = net.coca  # frozen, so that DDP does not wait for their gradients (same result on one process)
            tied = {id(p) for p in coca.token_emb.parameters()}
            for part in (coca.multimodal_layers, coca.to_logits, coca.text_to_latents, coca.img_to_latents):
                for param in part.parameters():
                    param.requires_grad_(id(param) in tied)
            coca.temperature.requires_grad_(False)

    def forward(self, text, image, has):
        feats = self.net.features(text, image, has)
        feats = _drop_image(feats, self.net.dim, float(self.params["image_dropout"]), self.training)
        return self.head(self.norm(feats))

    def training_step(self, batch, _):
        loss = self.loss(self(batch["text"], batch["image"], batch["has"]), batch["label"])
        w = float(self.params["joint_coca_weight"])
        if w > 0:
            h = batch["has"]
            photos = h.sum()
            if self.trainer.world_size > 1:  # the processes decide together: CoCa's loss gathers their rows
                import torch.distributed as dist

                dist.all_reduce(photos, op=dist.ReduceOp.MIN)
            if int(photos) > 1:
                loss = loss + w * self.net.loss(batch["text"][h], batch["image"][h])
            elif self.trainer.world_size > 1:  # a process with too few photos: every one takes part, weight 0
                loss = loss + 0.0 * self.net.loss(batch["text"], batch["image"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def predict_proba(self, data: PairData, batch_size: int, device=None) -> np.ndarray:
        import torch

        device = device or torch.device("cpu")
        self.to(device).eval()
        out = []
        with torch.inference_mode():
            for batch in data.loader(batch_size * 2):
                batch = {k: v.to(device) for k, v in batch.items()}
                out.append(self(batch["text"], batch["image"], batch["has"]).float().softmax(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.head[-1].out_features), np.float32)

    def configure_optimizers(self):
        lr = float(self.params["lr"])
        return adamw_cosine(self, self.params, [
            {"params": self.net.parameters(), "lr": lr * float(self.params["joint_coca_lr_mult"])},
            {"params": list(self.head.parameters()) + list(self.norm.parameters()), "lr": lr}])
