"""Which process of a multi-process launch this is (torch-free: models and the runner both ask it)."""
from __future__ import annotations

import os


def is_main_process() -> bool:
    """False in the extra processes of a multi-GPU / multi-node (DDP) run: rank 0 alone writes outputs."""
    return all(int(os.environ.get(var, 0) or 0) == 0
               for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
