"""Image base model: a timm backbone (EfficientNet) per fold, trained with PyTorch Lightning.

Two modes (`models.image.mode`):
- frozen: the pretrained backbone embeds every photo once (prodcat.models.nn.vision's content-keyed cache, shared
  with CoCa); a small MLP head is trained per fold on the embeddings. The CPU configuration.
- finetune: the whole network is trained per fold on augmented photos (AMP, DDP as the trainer section
  says). The GPU configuration.
- auto: finetune when a GPU is present, frozen otherwise.
Photos come from the frames' `image_path` column. Products without a usable photo get no prediction
(missing), never a made-up one.

Saved model (fold folder): image.json (mode, backbone, weights identity, sizes), classes.npz and the
trained weights as a state dict: head.pt (frozen: the head and its standardisation; the backbone is
rebuilt from the same weights source, which must still be the same file) or network.pt (finetune: the
whole network).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodcat.distributed import is_main_process
from prodcat.errors import DataError
from prodcat.models.base import BaseModel, child_name
from prodcat.models.nn.settings import HeadSettings, TrainerSettings
from prodcat.models.nn.trainer import (
    StepTimer,
    cpu_threads,
    load_state,
    process_batch,
    save_state,
)
from prodcat.models.nn.vision import (
    BackboneSpec,
    Embeddings,
    Photos,
    WeightsError,
    check_photos,
    no_photos_reason,
    photo_embeddings,
    photo_paths,
)
from prodcat.probs import TopK
from prodcat.settings import register_model, setting
from prodcat.storage import write_json, write_npz

META = "image.json"


@dataclass
class ImageSettings:
    backbone: str = setting("tf_efficientnet_lite0", "timm model name")
    pretrained: bool = setting(True, "start from pretrained weights (missing weights stop with an error)")
    weights: str = setting("auto", "a .pth file | package:<module> | timm | auto")
    mode: str = setting("auto", "frozen (cached embeddings + head) | finetune | auto (finetune on a GPU)",
                        choices=("auto", "frozen", "finetune"))
    image_size: int = setting(192, "input size in pixels", min=16)
    token_grid: int = setting(3, "grid of feature-map tokens kept in the embedding cache", min=1)
    embed_batch_size: int = setting(32, "photos per embedding batch", min=1)
    head: HeadSettings = setting(HeadSettings(), "the MLP head (frozen mode)")
    epochs: int = setting(30, "training epochs", min=1)
    batch_size: int = setting(64, "batch size (per GPU)", min=1)
    lr: float = setting(0.002, "learning rate (head; the backbone gets lr * backbone_lr_mult)", min=0.0)
    backbone_lr_mult: float = setting(0.1, "backbone learning rate factor (finetune)", min=0.0)
    weight_decay: float = setting(0.0001, "AdamW weight decay", min=0.0)
    warmup_steps: int = setting(-1, "warm-up steps (-1: 5 % of the steps)", min=-1)
    drop_path: float = setting(0.1, "stochastic depth (finetune)", min=0.0, max=1.0)
    label_smoothing: float = setting(0.1, "label smoothing", min=0.0, max=1.0)
    grad_clip: float = setting(1.0, "gradient clipping norm", min=0.0)
    tta_flip: bool = setting(True, "horizontal-flip test-time augmentation (finetune)")
    num_workers: int = setting(0, "data-loader workers", min=0)
    trainer: TrainerSettings = setting(TrainerSettings(), "Lightning trainer")


@register_model("image", ImageSettings)
class ImageModel(BaseModel):
    distributed = True  # Lightning: every DDP process trains the fold
    uses_photos = True  # the runner lists the training rows' missing and unreadable photos

    def __init__(self, params, env):
        super().__init__(params, env)
        self.classes: np.ndarray | None = None
        self.module = None  # FeatureHead (frozen) or FineTuneModule (finetune), fitted
        self._mode: str | None = None  # a loaded model keeps the mode it was trained in

    def skip_reason(self, train) -> str | None:
        return no_photos_reason(train, "the image model")

    def settings(self) -> dict:
        return {"params": self.params, "mode": self.mode, "top_k": self.env.top_k, "seed": self.env.seed}

    @property
    def mode(self) -> str:
        from prodcat.models.nn.trainer import has_gpu

        if self._mode is not None:
            return self._mode
        mode = self.params["mode"]
        if mode == "auto":
            return "finetune" if has_gpu() else "frozen"
        if mode not in ("frozen", "finetune"):
            raise ValueError(f"models.image.mode must be frozen, finetune or auto (got {mode!r})")
        return mode

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec.from_config(self.params)

    @property
    def size(self) -> int:
        return int(self.params["image_size"])

    def _threads(self):
        return cpu_threads(self.params["trainer"])

    # -- photos ----------------------------------------------------------------------------------------
    def embeddings(self, frame) -> Embeddings:
        """Frozen-backbone embeddings of the frame's photos (content-keyed cache, shared with CoCa)."""
        return photo_embeddings(photo_paths(frame), self.spec, self.size, grid=int(self.params["token_grid"]),
                                batch_size=int(self.params["embed_batch_size"]), cache=self.env.cache,
                                tokens=False)

    def photos(self, frame) -> Photos:
        return check_photos(photo_paths(frame))

    def prepare(self, train) -> None:
        """Embed (frozen) or check (finetune) every training photo once, before the folds."""
        with self._threads():
            found = self.embeddings(train) if self.mode == "frozen" else self.photos(train)
        print(f"[image] {found.summary()}")

    # -- fit -------------------------------------------------------------------------------------------
    def _fit(self, train, workdir: Path, fold: int | None) -> None:
        from prodcat.models.nn.trainer import seed

        self._mode = self.mode  # the fitted model keeps the mode it was trained in
        with self._threads():
            # before seeding: embedding photos (first run) must not shift the fold's random state
            found = self.embeddings(train) if self.mode == "frozen" else self.photos(train)
            if not found.usable.any():
                raise DataError(f"[{self.name}] {child_name(fold)}: no usable photo among the training rows")
            seed(self.child_seed(fold))
            if self.mode == "frozen":
                self._fit_frozen(train, found, workdir)
            else:
                self._fit_finetune(train, found, workdir)

    def _fit_frozen(self, train, emb: Embeddings, workdir: Path) -> None:
        import torch

        from prodcat.models.nn.heads import FeatureHead, robust_std
        from prodcat.models.nn.trainer import make_trainer

        keep = emb.usable
        y = train["category_id"].to_numpy()[keep]
        self.classes = np.unique(y)
        x = torch.from_numpy(emb.pooled[keep])
        module = FeatureHead(x.shape[1], len(self.classes), self.params, mean=x.mean(0), std=robust_std(x))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.from_numpy(np.searchsorted(self.classes, y))),
            batch_size=process_batch(self.params["batch_size"], self.params["trainer"]), shuffle=True)
        trainer = make_trainer(self.params["trainer"], workdir, int(self.params["epochs"]), "head")
        trainer.fit(module, loader)
        self.module = module.cpu().eval()

    def _fit_finetune(self, train, photos: Photos, workdir: Path) -> None:
        import torch

        from prodcat.models.nn.finetune import FineTuneModule
        from prodcat.models.nn.trainer import make_trainer
        from prodcat.models.nn.vision import backbone_norm, create_backbone, train_transform

        keep = photos.usable
        y = train["category_id"].to_numpy()[keep]
        self.classes = np.unique(y)
        backbone = create_backbone(self.spec, drop_path_rate=float(self.params["drop_path"]))
        mean, std = backbone_norm(backbone)
        module = FineTuneModule(backbone, len(self.classes), self.params)
        bs = process_batch(self.params["batch_size"], self.params["trainer"])
        workers = int(self.params["num_workers"])
        paths = [p for p, k in zip(photos.paths, keep) if k]
        loader = torch.utils.data.DataLoader(
            PhotoDataset(paths, np.searchsorted(self.classes, y), train_transform(self.size, mean, std)),
            batch_size=bs, shuffle=True, drop_last=len(paths) > int(self.params["batch_size"]), num_workers=workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        epochs = int(self.params["epochs"])
        timer = StepTimer()
        trainer = make_trainer(self.params["trainer"], workdir, epochs, "finetune", callbacks=[timer],
                               gradient_clip_val=float(self.params["grad_clip"]))
        trainer.fit(module, loader)
        self.module = module.eval()
        if is_main_process():  # images/s and seconds per epoch of this fold (bench/gpu_smoke.sh prints them)
            write_json(timer.summary() | {"images": len(paths)}, workdir / "stats.json")

    # -- predict ---------------------------------------------------------------------------------------
    def predict(self, frame) -> TopK:
        """Class probabilities of every product with a usable photo; the others are missing."""
        import torch

        ids = frame["id"].to_numpy()
        proba = np.zeros((len(frame), len(self.classes)), np.float32)
        with self._threads():
            if self.mode == "frozen":
                emb = self.embeddings(frame)
                have = emb.usable.copy()
                if have.any():
                    with torch.inference_mode():
                        proba[have] = self.module(torch.from_numpy(emb.pooled[have])).softmax(-1).numpy()
            else:
                have = self._predict_finetune(self.photos(frame), proba)
        return TopK.from_dense(ids, proba, self.classes, self.env.top_k, missing=~have)

    def _predict_finetune(self, photos: Photos, proba: np.ndarray) -> np.ndarray:
        from prodcat.models.nn.trainer import device_for
        from prodcat.models.nn.vision import backbone_norm, eval_transform

        have = photos.usable.copy()
        device = device_for(self.params["trainer"])
        module = self.module.to(device).eval()
        tf = eval_transform(self.size, *backbone_norm(module.backbone))
        idx = np.flatnonzero(have)
        got = predict_photos(module, [photos.paths[i] for i in idx], tf, int(self.params["batch_size"]),
                             int(self.params["num_workers"]), device,
                             tta=bool(self.params["tta_flip"]))
        ok = ~np.isnan(got[:, 0]) if len(got) else np.zeros(0, bool)
        proba[idx[ok]] = got[ok]
        have[idx[~ok]] = False  # verified but undecodable file: no prediction
        return have

    # -- save / load -----------------------------------------------------------------------------------
    def _weights_id(self) -> str | None:
        """The frozen backbone's weights (name and file name/size): a loaded head needs the same ones."""
        return self.spec.cache_key() if self.mode == "frozen" else None

    def save(self, folder: Path) -> None:
        spec = self.spec
        write_json({"mode": self.mode, "backbone": spec.name, "pretrained": spec.pretrained, "weights": spec.weights,
                    "weights_id": self._weights_id(), "image_size": self.size,
                    "token_grid": int(self.params["token_grid"]), "classes": len(self.classes),
                    "in_dim": int(self.module.mean.shape[0]) if self.mode == "frozen" else None}, folder / META)
        write_npz({"classes": self.classes}, folder / "classes.npz")
        save_state(self.module, folder / ("head.pt" if self.mode == "frozen" else "network.pt"))

    @classmethod
    def load(cls, folder: Path, params: dict, env) -> "ImageModel":
        from prodcat.models.nn.finetune import FineTuneModule
        from prodcat.models.nn.heads import FeatureHead
        from prodcat.models.nn.vision import create_backbone

        meta = json.loads((folder / META).read_text())
        model = cls(params, env)
        model._mode = meta["mode"]
        with np.load(folder / "classes.npz") as z:
            model.classes = z["classes"]
        if model.mode == "frozen":
            now = model._weights_id()  # raises WeightsError when the weights source is gone
            if now != meta["weights_id"]:
                raise WeightsError(f"{folder}: the image head was trained on {meta['weights_id']} embeddings, "
                                   f"but the backbone weights are now {now}: retrain the image model")
            model.module = load_state(FeatureHead(int(meta["in_dim"]), len(model.classes), params), folder / "head.pt")
        else:  # the whole fine-tuned network is in network.pt: no pretrained weights needed
            backbone = create_backbone(BackboneSpec(meta["backbone"], pretrained=False))
            model.module = load_state(FineTuneModule(backbone, len(model.classes), params), folder / "network.pt")
        model.module.eval()
        return model


class PhotoDataset:
    """(transformed photo, label) pairs; a photo that fails to decode yields a NaN tensor (dropped later)."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from prodcat.models.nn.vision import blank_like, photo_tensor

        x = photo_tensor(self.paths[i], self.transform)
        if x is None:
            x = blank_like(self.transform, float("nan"))
        y = -1 if self.labels is None else int(self.labels[i])
        return x, y


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
