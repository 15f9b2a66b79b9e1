"""Run a test worker in 2 processes joined by torch.distributed's gloo backend (CPU)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, worker, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        worker(rank, world, out)
    finally:
        dist.destroy_process_group()


def run_on_gloo_ranks(worker, out, world: int = 2) -> None:
    """``worker(rank, world, out)`` (a module-level function) on ``world`` processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_entry, args=(worker, world, port, str(out)), nprocs=world, join=True)
