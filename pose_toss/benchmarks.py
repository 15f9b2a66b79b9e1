"""Reproducible throughput measurements (printed numbers, never timed unit tests)."""

from __future__ import annotations

import os
import platform
import time

import cv2
import torch

from pose_toss.config import load_config
from pose_toss.data.dataset import PoseDataset
from pose_toss.data.synthetic import SyntheticPoseDataset


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "opencv": cv2.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def data_throughput(input_size: int, num: int = 400, warmup: int = 20, seed: int = 0) -> float:
    """Samples/s of the full training pipeline on one core: render + crop + augment + heatmaps + tensors."""
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        cfg = load_config(overrides=[f"data.input_size={input_size}"])
        source = SyntheticPoseDataset(num + warmup, input_size, seed)
        dataset = PoseDataset.from_config(source, cfg.data, train=True)
        for i in range(warmup):
            dataset[i]
        start = time.perf_counter()
        for i in range(warmup, warmup + num):
            dataset[i]
        return num / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
