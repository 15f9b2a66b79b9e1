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


class GraphedInference:
    """A model's eval-mode forward captured once as a CUDA graph for one batch shape.

    An eager forward at a small batch is bound by kernel launches (hundreds of small kernels, each launched
    from Python); replaying the captured graph launches them all at once. ``graphed(images)`` copies the
    images into the captured input and replays: it returns the same ``PoseOutput`` tensors every call,
    overwritten by the next call (clone what must outlive it). Only images of the captured shape, dtype
    and device are accepted.
    """

    def __init__(self, model: torch.nn.Module, example: torch.Tensor, amp: bool = False,
                 with_covariance: bool = True, warmup: int = 3) -> None:
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need images on a CUDA device, got {example.device}")
        if model.training:
            raise ValueError("capture the model in eval mode (model.eval()): a graph replays fixed batch statistics")
        self.model, self.amp, self.with_covariance = model, amp, with_covariance
        self.images = example.clone()
        side = torch.cuda.Stream(example.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self._forward()

    def _forward(self):
        # autocast's weight cache must stay off inside a captured graph
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            return self.model(self.images, with_covariance=self.with_covariance)

    def __call__(self, images: torch.Tensor):
        mine = self.images
        if images.shape != mine.shape or images.dtype != mine.dtype or images.device != mine.device:
            raise ValueError(f"this graph was captured for images {tuple(mine.shape)} {mine.dtype} on {mine.device}, "
                             f"got {tuple(images.shape)} {images.dtype} on {images.device}")
        self.images.copy_(images)
        self.graph.replay()
        return self.output
