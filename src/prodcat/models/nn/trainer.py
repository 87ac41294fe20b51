"""One PyTorch Lightning Trainer for every neural model, built from a config's `trainer:` section.

    trainer:
      accelerator: auto      # gpu when present, cpu otherwise (one process); 'cpu': devices = CPU processes
      devices: auto          # processes per node: GPUs ('auto': all of them); 1 on a CPU unless accelerator: cpu
      num_nodes: 1
      strategy: auto         # 'ddp' for several GPUs / processes / nodes (batch_size stays the global batch)
      precision: auto        # bf16-mixed on a GPU that has it, else 16-mixed; 32-true on a CPU
      progress_bar: auto     # on when stderr is a terminal
      log_every_n_steps: 10
      cpu_threads: 0         # torch threads on a CPU (0: torch's default, all cores); no effect on a GPU

Logs go to TensorBoard under <workdir>/tb/<name> and checkpoints to <workdir>/checkpoints/<name>/last.ckpt, where the
workdir is models/<dataset>/<model>/fold<K>. Seeds are set with `seed_everything`.
"""
from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from prodcat.models.nn.settings import TrainerSettings
from prodcat.settings import defaults_of

DEFAULTS = defaults_of(TrainerSettings)  # declared (with their docs) in prodcat.models.nn.settings


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(cfg: dict | None) -> dict:
    """Trainer settings with 'auto' made concrete for this machine.

    Several processes (DDP) run where the section asks for them: on GPUs (`devices` per node, `num_nodes`),
    or on a CPU when `accelerator: cpu` is explicit (`devices: N` processes over gloo; the CPU test of the
    multi-process path). With `accelerator: auto` on a machine without a GPU, one process.
    """
    import torch

    cfg = {**DEFAULTS, **(cfg or {})}
    gpu = has_gpu() and cfg["accelerator"] in ("auto", "gpu", "cuda")
    if cfg["accelerator"] in ("gpu", "cuda") and not gpu:
        from prodcat.errors import DataError

        raise DataError("trainer.accelerator is 'gpu' but torch sees no GPU on this machine: use "
                        "accelerator: auto (or cpu), or run on a machine with a GPU")
    accelerator = "gpu" if gpu else "cpu"
    precision = cfg["precision"]
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    elif not gpu and str(precision).startswith("16"):
        precision = "32-true"  # fp16 autocast is a GPU feature; the same config still runs on a CPU
    if gpu:
        devices, nodes = cfg["devices"], int(cfg["num_nodes"])
    elif cfg["accelerator"] == "cpu":
        devices, nodes = (1 if cfg["devices"] == "auto" else int(cfg["devices"])), int(cfg["num_nodes"])
    else:
        devices, nodes = 1, 1
    strategy = cfg["strategy"]
    if devices == 1 and nodes == 1:
        strategy = "auto"  # one process: no process group to set up
    progress = sys.stderr.isatty() if cfg["progress_bar"] == "auto" else bool(cfg["progress_bar"])
    return {"accelerator": accelerator, "devices": devices, "num_nodes": nodes, "strategy": strategy,
            "precision": precision, "enable_progress_bar": progress, "log_every_n_steps": int(cfg["log_every_n_steps"])}


def world_size(cfg: dict | None) -> int:
    """Training processes in all: devices per node x nodes ('auto' devices: the GPUs torch sees)."""
    import torch

    settings = resolve(cfg)
    devices = settings["devices"]
    if not isinstance(devices, int):
        devices = max(torch.cuda.device_count(), 1)
    return devices * settings["num_nodes"]


def process_batch(batch_size: int, cfg: dict | None) -> int:
    """Each process's batch: `batch_size` is the global batch, split over the training processes (rounded
    down), so that a model's optimisation (its learning rate, its steps per epoch) does not depend on how
    many there are."""
    return max(int(batch_size) // world_size(cfg), 1)


def check_world(processes: int, name: str) -> None:
    """Processes started for one model stay for the rest of the command: a later model of the same command
    must ask for as many (else it would train on a wrong share of the data, or fail deep in Lightning)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() != processes:
        from prodcat.errors import DataError

        raise DataError(f"{name}: this command already trains with {dist.get_world_size()} processes, but this "
                        f"model's trainer section asks for {processes}: give every Lightning model of one "
                        "command the same trainer devices / num_nodes (or train them with separate commands)")


def lightning():
    """pytorch_lightning, imported after the torchvision fix (Lightning imports torchvision)."""
    from prodcat.models.nn.vision import ensure_torchvision

    ensure_torchvision()
    import pytorch_lightning as pl

    return pl


def set_cpu_threads(cfg: dict | None) -> None:
    """Limit torch's CPU threads when the config says so (and no GPU is used).

    Measured on the shared 2-core demo machine: the image head's 3 folds take 9.5 s with 1 thread and 32 s
    with 2, and a CoCa step is no faster with 2 - when other processes hold the cores, threads that wait for
    each other lose more than they gain.
    """
    import torch

    n = int({**DEFAULTS, **(cfg or {})}.get("cpu_threads") or 0)
    if n > 0 and not has_gpu():
        torch.set_num_threads(n)


@contextmanager
def cpu_threads(cfg: dict | None):
    """`set_cpu_threads` for the duration of a block (fit, predict, embedding), then torch's previous count:
    a model predicting inside another program leaves its thread setting as it was. The same count in
    training and in a later process that loads the model also keeps their numbers identical."""
    import torch

    before = torch.get_num_threads()
    set_cpu_threads(cfg)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def device_for(cfg: dict | None):
    """The torch device a trained network predicts on: this process's GPU when the trainer section uses
    one, else the CPU."""
    import torch

    if has_gpu() and resolve(cfg)["accelerator"] == "gpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed(value: int) -> None:
    pl = lightning()
    pl.seed_everything(value, workers=True, verbose=False)


def make_trainer(cfg: dict | None, workdir: Path, max_epochs: int, name: str = "", monitor: str | None = None,
                 callbacks: list | None = None, **extra):
    """A pl.Trainer logging to TensorBoard under `workdir`/tb. No Lightning checkpoints: they are pickles,
    and a model folder holds only data (the fitted weights are saved as state dicts by the model)."""
    pl = lightning()
    from pytorch_lightning.loggers import TensorBoardLogger

    quiet_lightning()
    workdir = Path(workdir)
    settings = resolve(cfg)
    logger = TensorBoardLogger(save_dir=str(workdir), name="tb", version=name or "", default_hp_metric=False)
    from prodcat.distributed import is_main_process

    processes = world_size(cfg)
    check_world(processes, name or "fit")
    if processes > 1 and settings["accelerator"] == "gpu":  # (torch's SyncBatchNorm runs on GPUs only)
        extra = {"sync_batchnorm": True} | extra  # BatchNorm statistics over the global batch, not a shard
    if processes > 1 and is_main_process():
        backend = "nccl" if settings["accelerator"] == "gpu" else "gloo"
        print(f"[trainer] {name or 'fit'}: {processes} processes ({settings['devices']} per node x "
              f"{settings['num_nodes']} node(s), {settings['strategy']} over {backend})", flush=True)
    return pl.Trainer(max_epochs=max_epochs, logger=logger, callbacks=list(callbacks or []),
                      enable_checkpointing=False, default_root_dir=str(workdir), enable_model_summary=False,
                      deterministic=False, num_sanity_val_steps=0, **settings, **extra)


def quiet_lightning() -> None:
    """Lightning's per-fit banners ('GPU available: False ...') and hints are noise in a k-fold loop."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*isinstance.*treespec.*",
                    ".*The number of training batches.*", ".*srun.*", ".*tensorboardX.*"):
        warnings.filterwarnings("ignore", message=pattern)


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def adamw_cosine(module, params: dict, groups: list[dict]) -> dict:
    """AdamW with linear warm-up and cosine decay per step, over the optimizer steps the fit will take
    (Lightning's count: it knows each process's share of the data once the sampler shards it)."""
    import math

    import torch

    opt = torch.optim.AdamW(groups, weight_decay=float(params["weight_decay"]))
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    warm = int(params["warmup_steps"])
    warm = min(total // 20 if warm < 0 else warm, total - 1)  # -1: 5 % of the steps

    def factor(step):
        if step < warm:
            return (step + 1) / max(warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(total - warm, 1), 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StepTimer:
    """Lightning callback: CPU seconds (process time) and wall seconds per training step, wall seconds per
    epoch and training samples per second (all processes together: this process's count x the world size)."""

    def __new__(cls):
        pl = lightning()

        class _Timer(pl.Callback):
            def __init__(self):
                self.steps, self.cpu, self.wall, self.samples, self.epochs, self.world = 0, 0.0, 0.0, 0, [], 1

            def on_train_epoch_start(self, trainer, *args):
                import time

                self.world = int(trainer.world_size)
                self._e = time.perf_counter()

            def on_train_epoch_end(self, *args):
                import time

                self.epochs.append(time.perf_counter() - self._e)

            def on_train_batch_start(self, trainer, module, batch, *args):
                import time

                self.samples += _batch_len(batch)
                self._c, self._w = time.process_time(), time.perf_counter()

            def on_train_batch_end(self, *args):
                import time

                self.steps += 1
                self.cpu += time.process_time() - self._c
                self.wall += time.perf_counter() - self._w

            def summary(self) -> dict:
                n = max(self.steps, 1)
                timed = self.epochs[1:] or self.epochs  # the first epoch (warm-up, compilation) only if alone
                per_epoch = sum(timed) / max(len(timed), 1)
                samples = self.samples / max(len(self.epochs), 1) * self.world  # per epoch, every process
                return {"steps": self.steps, "cpu_s_per_step": round(self.cpu / n, 4),
                        "wall_s_per_step": round(self.wall / n, 4), "processes": self.world,
                        "epochs": len(self.epochs), "s_per_epoch": round(per_epoch, 2),
                        "samples_per_s": round(samples / per_epoch, 1) if per_epoch else None}

        return _Timer()


def _batch_len(batch) -> int:
    """Rows in a training batch: a tensor, a tuple/list of them or a dict of them."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else (
        batch[0] if isinstance(batch, (list, tuple)) else batch)
    return int(first.shape[0]) if hasattr(first, "shape") else 0


def save_state(module, path: Path) -> None:
    """A network's state dict (tensors only, on the CPU), written atomically: read back with
    `load_state(path)` (torch.load with weights_only=True: nothing is executed on load)."""
    import torch

    from prodcat.storage import atomic_path

    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(module, path: Path):
    """Load a state dict written by `save_state` into `module` (every key must match); returns the module."""
    import torch

    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return module
