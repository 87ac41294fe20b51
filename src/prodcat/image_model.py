"""Image base model: a timm backbone (EfficientNet) per fold, trained with PyTorch Lightning.

Two modes (`models.image.mode`):
- frozen: the pretrained backbone embeds every photo once (cached per dataset under cache/); a small MLP
  head is trained per fold on the embeddings. The CPU configuration.
- finetune: the whole network is trained per fold on augmented photos (AMP, DDP as the trainer section
  says). The GPU configuration.
- auto: finetune when a GPU is present, frozen otherwise.
Products without a usable photo get no prediction (missing), never a made-up one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prodcat.trainer import adamw_cosine, lightning
from prodcat.cv import BaseModel
from prodcat.probs import TopK
from prodcat.vision import BackboneSpec, cached_embeddings, no_images_reason, photo_index


class ImageModel(BaseModel):
    name = "image"

    def __init__(self, run, params):
        super().__init__(run, params)
        self._emb = None
        self._photos = None

    def skip_reason(self) -> str | None:
        return no_images_reason(self.run.ds, "the image model")

    def settings(self) -> dict:
        return {"params": self.params, "mode": self.mode, "top_k": self.run.top_k, "seed": self.run.seed}

    @property
    def mode(self) -> str:
        from prodcat.trainer import has_gpu

        mode = self.params.get("mode", "auto")
        if mode == "auto":
            return "finetune" if has_gpu() else "frozen"
        if mode not in ("frozen", "finetune"):
            raise ValueError(f"models.image.mode must be frozen, finetune or auto (got {mode!r})")
        return mode

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec.from_config(self.params)

    def fit_predict(self, fold, train, predict, workdir: Path):
        from prodcat.trainer import seed, set_cpu_threads

        set_cpu_threads(self.params.get("trainer"))
        if self.mode == "frozen":
            self.embeddings()  # before seeding: computing them (first run) must not shift the fold's random state
        seed(self.run.seed + fold)
        if self.mode == "frozen":
            return self._fit_frozen(fold, train, predict, workdir)
        return self._fit_finetune(fold, train, predict, workdir)

    # -- frozen backbone + head on cached embeddings ---------------------------------------------------
    def embeddings(self):
        if self._emb is None:
            emb = cached_embeddings(self.run, self.spec, int(self.params.get("image_size", 224)),
                                    grid=int(self.params.get("token_grid", 3)),
                                    batch_size=int(self.params.get("embed_batch_size", 32)))
            self._emb = emb
        return self._emb

    def _fit_frozen(self, fold, train, predict, workdir):
        import torch

        from prodcat.trainer import make_trainer

        emb = self.embeddings()
        feats, usable = emb.pooled, emb.usable
        rows = emb.rows(train["id"])
        keep = usable[rows]
        rows, y = rows[keep], train["category_id"].to_numpy()[keep]
        classes = np.unique(y)
        target = np.searchsorted(classes, y)
        x = torch.from_numpy(feats[rows])
        module = HeadModule(x.shape[1], len(classes), self.params, mean=x.mean(0), std=robust_std(x))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.from_numpy(target)),
            batch_size=int(self.params.get("batch_size", 64)), shuffle=True)
        module.total_steps = int(self.params.get("epochs", 40)) * len(loader)
        trainer = make_trainer(self.params.get("trainer"), workdir, int(self.params.get("epochs", 40)), "head")
        trainer.fit(module, loader)
        module.eval()
        out = {}
        for split, frame in predict.items():
            r = emb.rows(frame["id"])
            have = usable[r]
            proba = np.zeros((len(frame), len(classes)), np.float32)
            if have.any():
                with torch.inference_mode():
                    proba[have] = module(torch.from_numpy(feats[r[have]])).softmax(-1).numpy()
            out[split] = TopK.from_dense(frame["id"].to_numpy(), proba, classes, self.run.top_k, missing=~have)
        return out

    # -- full fine-tuning -------------------------------------------------------------------------------
    def photos(self):
        if self._photos is None:
            self._photos = photo_index(self.run.ds)
            print(f"[image] {self._photos.summary()}")
        return self._photos

    def _fit_finetune(self, fold, train, predict, workdir):
        import torch

        from prodcat.trainer import make_trainer, resolve
        from prodcat.vision import backbone_norm, create_backbone, eval_transform, train_transform

        index = self.photos()
        where = {int(i): n for n, i in enumerate(index.ids.tolist())}
        size = int(self.params.get("image_size", 300))
        rows = np.array([where[int(i)] for i in train["id"]])
        keep = index.usable[rows]
        rows, y = rows[keep], train["category_id"].to_numpy()[keep]
        classes = np.unique(y)
        backbone = create_backbone(self.spec, drop_path_rate=float(self.params.get("drop_path", 0.1)))
        mean, std = backbone_norm(backbone)
        module = FineTuneModule(backbone, len(classes), self.params)
        bs = int(self.params.get("batch_size", 64))
        workers = int(self.params.get("num_workers", 8))
        loader = torch.utils.data.DataLoader(
            PhotoDataset([index.paths[r] for r in rows], np.searchsorted(classes, y), train_transform(size, mean, std)),
            batch_size=bs, shuffle=True, drop_last=True, num_workers=workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0)
        epochs = int(self.params.get("epochs", 10))
        settings = resolve(self.params.get("trainer"))
        world = (settings["devices"] if isinstance(settings["devices"], int) else max(torch.cuda.device_count(), 1))
        module.total_steps = epochs * max(len(loader) // max(world * settings["num_nodes"], 1), 1)
        trainer = make_trainer(self.params.get("trainer"), workdir, epochs, "finetune",
                               gradient_clip_val=float(self.params.get("grad_clip", 1.0)))
        trainer.fit(module, loader)
        device = next(module.parameters()).device if settings["accelerator"] == "gpu" else torch.device("cpu")
        module = module.to(device).eval()
        tf = eval_transform(size, mean, std)
        out = {}
        for split, frame in predict.items():
            r = np.array([where[int(i)] for i in frame["id"]], dtype=int)
            have = index.usable[r] if len(r) else np.zeros(0, bool)
            proba = np.zeros((len(frame), len(classes)), np.float32)
            got = predict_photos(module, [index.paths[i] for i in r[have]], tf, bs, workers, device,
                                 tta=bool(self.params.get("tta_flip", True)))
            ok = ~np.isnan(got[:, 0]) if len(got) else np.zeros(0, bool)
            idx = np.flatnonzero(have)
            proba[idx[ok]] = got[ok]
            have[idx[~ok]] = False  # verified but undecodable file: no prediction
            out[split] = TopK.from_dense(frame["id"].to_numpy(), proba, classes, self.run.top_k, missing=~have)
        return out


# -- Lightning modules -----------------------------------------------------------------------------------
class HeadModule(lightning().LightningModule):
    """MLP on standardised frozen-backbone embeddings."""

    def __init__(self, in_dim, n_classes, params, mean=None, std=None):
        import torch
        from torch import nn

        super().__init__()
        self.params = params
        hidden = int(params.get("head", {}).get("hidden", 512))
        drop = float(params.get("head", {}).get("dropout", 0.3))
        self.register_buffer("mean", torch.zeros(in_dim) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(in_dim) if std is None else std.float())
        layers = [nn.Dropout(float(params.get("head", {}).get("input_dropout", 0.2)))]
        layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, n_classes)] if hidden \
            else [nn.Linear(in_dim, n_classes)]
        self.net = nn.Sequential(*layers)
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.1)))
        self.total_steps = 1

    def forward(self, x):
        return self.net((x - self.mean) / self.std)

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def configure_optimizers(self):
        return adamw_cosine(self, self.params, [{"params": self.parameters(), "lr": float(self.params.get("lr", 2e-3))}])


class FineTuneModule(lightning().LightningModule):
    """Backbone + linear head trained end to end; the backbone at a lower learning rate."""

    def __init__(self, backbone, n_classes, params):
        from torch import nn

        super().__init__()
        self.params = params
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(float(params.get("head", {}).get("dropout", 0.3))),
                                  nn.Linear(backbone.num_features, n_classes))
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.1)))
        self.total_steps = 1

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.log("train_loss", loss, prog_bar=True, sync_dist=False)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def configure_optimizers(self):
        lr = float(self.params.get("lr", 1e-3))
        return adamw_cosine(self, self.params, [
            {"params": self.backbone.parameters(), "lr": lr * float(self.params.get("backbone_lr_mult", 0.1))},
            {"params": self.head.parameters(), "lr": lr}])


class PhotoDataset:
    """(transformed photo, label) pairs; a photo that fails to decode yields a NaN tensor (dropped later)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torch

        from prodcat.vision import load_image

        im = load_image(self.paths[i])
        if im is None:
            im = _blank()
            x = self.transform(im)
            x = torch.full_like(x, float("nan"))
        else:
            x = self.transform(im)
        y = -1 if self.labels is None else int(self.labels[i])
        return x, y


def _blank():
    from PIL import Image

    return Image.new("RGB", (32, 32), (255, 255, 255))


def predict_photos(module, paths, transform, batch_size, workers, device, tta=True) -> np.ndarray:
    """Softmax over the module's classes per photo (NaN rows for photos that fail to decode)."""
    import torch

    if not paths:
        return np.zeros((0, 1), np.float32)
    loader = torch.utils.data.DataLoader(PhotoDataset(paths, None, transform), batch_size=batch_size,
                                         num_workers=workers)
    outs = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for x, _ in loader:
            bad = torch.isnan(x.flatten(1)).any(1)
            x = torch.nan_to_num(x).to(device, non_blocking=True)
            p = module(x).float().softmax(-1)
            if tta:
                p = (p + module(torch.flip(x, dims=[3])).float().softmax(-1)) / 2
            p[bad.to(p.device)] = float("nan")
            outs.append(p.cpu().numpy())
    return np.concatenate(outs)


def robust_std(x):
    """Per-feature std for standardising, floored: a feature (almost) constant on the training rows (common
    after ReLU: mostly zeros) must not blow up on other rows."""
    std = x.std(0)
    return std.clamp_min(float(std.mean()) * 0.1 + 1e-6)
