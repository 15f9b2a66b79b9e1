"""Where a run executes: its device, its torch.distributed rank, its seeds and RNG states, autocast."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def setup_runtime(preference: str = "auto") -> Runtime:
    """Join torch.distributed when launched by torchrun (WORLD_SIZE > 1) or when a process group
    already exists; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world > 1:
        backend = "nccl" if resolve_device(preference).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        device = resolve_device(preference)
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        return Runtime(device, rank, world)
    return Runtime(resolve_device(preference))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_states() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; nothing on CPU (covariance math casts itself to float32)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
