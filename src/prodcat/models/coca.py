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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodcat.data.tokens import Vocab, lemmas_many, navec_matrix
from prodcat.distributed import is_main_process
from prodcat.errors import DataError
from prodcat.models.base import BaseModel, child_name
from prodcat.models.nn.settings import HeadSettings, TrainerSettings
from prodcat.models.nn.trainer import (  # noqa: I001
    StepTimer,
    count_params,
    cpu_threads,
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
from prodcat.settings import config_hash, register_model, setting
from prodcat.storage import atomic_path, write_json, write_npz

META = "coca.json"


@dataclass
class ImageEncoderSettings:
    type: str = setting("timm", "timm backbone feature map | vit (small ViT from scratch)", choices=("timm", "vit"))
    backbone: str = setting("tf_efficientnet_lite0", "timm model name (type timm)")
    pretrained: bool = setting(True, "pretrained backbone (same rules as models.image)")
    weights: str = setting("auto", "a .pth file | package:<module> | timm | auto")
    frozen: bool = setting(True, "tokens from the shared embedding cache (false: trained inside CoCa)")
    image_size: int = setting(192, "input size in pixels", min=16)
    token_grid: int = setting(3, "feature map pooled to a grid of this many tokens per side", min=1)
    embed_batch_size: int = setting(32, "photos per embedding batch", min=1)
    patch: int = setting(8, "ViT patch size (type vit)", min=1)
    dim: int = setting(192, "ViT width (type vit)", min=1)
    depth: int = setting(4, "ViT layers (type vit)", min=1)
    heads: int = setting(3, "ViT heads (type vit)", min=1)


@dataclass
class CocaSettings:
    seq_len: int = setting(24, "lemmas per product, plus <bos>/<eos>", min=1)
    vocab_size: int = setting(30_000, "most frequent lemmas of the training folds", min=10)
    min_count: int = setting(1, "minimal lemma count", min=1)
    navec: str = setting("auto", "navec .tar for the token embedding init (auto: natasha's; none: random)")
    image_encoder: ImageEncoderSettings = setting(ImageEncoderSettings(), "the image side")
    dim: int = setting(128, "model width", min=8)
    dim_latents: int = setting(0, "contrastive latent size (0: dim)", min=0)
    unimodal_depth: int = setting(2, "text-only layers", min=1)
    multimodal_depth: int = setting(1, "text+image layers", min=1)
    heads: int = setting(4, "attention heads", min=1)
    dim_head: int = setting(32, "size per attention head", min=1)
    ff_mult: int = setting(2, "feed-forward width factor", min=1)
    num_img_queries: int = setting(8, "image queries of the attention pooler", min=1)
    tied_output: bool = setting(True, "caption logits tied to the token embedding")
    caption_loss_weight: float = setting(1.0, "stage 1: weight of the caption loss", min=0.0)
    contrastive_loss_weight: float = setting(1.0, "stage 1: weight of the contrastive loss", min=0.0)
    batch_size: int = setting(64, "batch size (per GPU)", min=1)
    lr: float = setting(0.001, "stage-1 learning rate", min=0.0)
    weight_decay: float = setting(0.01, "AdamW weight decay", min=0.0)
    warmup_steps: int = setting(-1, "warm-up steps (-1: 5 % of the steps)", min=-1)
    grad_clip: float = setting(1.0, "gradient clipping norm", min=0.0)
    stage1_epochs: int = setting(8, "contrastive + caption epochs", min=0)
    stage2: str = setting("mlp", "mlp (CoCa frozen) | joint (CoCa + classifier)", choices=("mlp", "joint"))
    stage2_epochs: int = setting(25, "classifier epochs", min=1)
    stage2_batch_size: int = setting(128, "classifier batch size", min=1)
    head_lr: float = setting(0.002, "classifier learning rate", min=0.0)
    joint_coca_lr_mult: float = setting(0.3, "joint: CoCa's learning rate factor", min=0.0)
    joint_coca_weight: float = setting(0.0, "joint: weight of CoCa's own loss", min=0.0)
    head: HeadSettings = setting(HeadSettings(input_dropout=0.1), "the classifier head")
    image_dropout: float = setting(0.15, "photos dropped in training (trains the text-only path)",
                                   min=0.0, max=1.0)
    label_smoothing: float = setting(0.1, "label smoothing", min=0.0, max=1.0)
    num_workers: int = setting(0, "data-loader workers", min=0)
    trainer: TrainerSettings = setting(TrainerSettings(), "Lightning trainer")
    text: dict = setting({}, "text settings for this model only (keys of `text`)")


@register_model("coca", CocaSettings)
class CocaModel(BaseModel):
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
        from prodcat.models.nn.coca_net import TimmTokens, TinyViT

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

        from prodcat.models.nn.coca_net import CocaNet

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
            stage1 = self._stage1(net, data.subset(data.has), workdir)
            stats["stage1"] = stage1 | {"seconds": round(time.time() - t0, 1)}
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
        from prodcat.models.nn.coca_net import Stage1Module

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

        from prodcat.models.nn.coca_net import PairHead
        from prodcat.models.nn.heads import robust_std

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
        from prodcat.models.nn.coca_net import JointModule

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

        from prodcat.models.nn.coca_net import CocaNet, JointModule, PairHead

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
