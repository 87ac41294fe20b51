"""Settings shared by the neural models (image, coca): the Lightning trainer and the MLP head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from prodcat.settings import setting


@dataclass
class TrainerSettings:
    accelerator: str = setting("auto", "Lightning accelerator", choices=("auto", "cpu", "gpu", "cuda"))
    devices: Union[int, str] = setting("auto", "processes per node: GPUs ('auto': all of them); with accelerator: "
                                       "cpu, CPU processes (gloo)", min=1, choices=("auto",))
    num_nodes: int = setting(1, "nodes (DDP)", min=1)
    strategy: str = setting("auto", "Lightning strategy", choices=("auto", "ddp", "ddp_spawn", "fsdp"))
    precision: str = setting("auto", "precision ('auto': bf16/16-mixed on a GPU, 32 on a CPU)",
                             choices=("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"))
    progress_bar: Union[bool, str] = setting("auto", "progress bar ('auto': on a terminal)", choices=("auto",))
    log_every_n_steps: int = setting(10, "logging interval (steps)", min=1)
    cpu_threads: int = setting(1, "torch CPU threads (0: all cores; 1 was fastest on the shared 2-core machine)", min=0)


@dataclass
class HeadSettings:
    hidden: int = setting(512, "hidden units of the MLP head (0: linear)", min=0)
    dropout: float = setting(0.3, "dropout before the output layer", min=0.0, max=1.0)
    input_dropout: float = setting(0.2, "dropout on the input features", min=0.0, max=1.0)
