"""Experiment logging beside ``metrics.jsonl`` (always written): TensorBoard, when ``train.log`` lists it.

Each epoch's line of ``metrics.jsonl`` becomes scalars, grouped as TensorBoard shows them (``train/``, ``val/``,
``pseudo_labels/``; the learning rate is ``train/lr``), and a contact sheet of validation crops with their 50 % /
90 % ellipses and labels becomes an image, all at step = epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pose_toss.config import ConfigError

TENSORBOARD_DIR = "tensorboard"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key."""
    for prefix, group in (("val_", "val/"), ("pseudo_label_", "pseudo_labels/")):
        if key.startswith(prefix):
            return group + key[len(prefix):]
    return "train/" + key


def summary_writer_class():
    """torch's SummaryWriter; a clear error (before any training) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("key 'train.log' lists tensorboard, which needs the tensorboard package: pip install "
                          "'pose-toss[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


class TensorBoardLog:
    """A run's TensorBoard event files under ``folder`` (``out/tensorboard``); resuming adds a new file there."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.writer = summary_writer_class()(str(self.folder))

    def epoch(self, line: dict, picture: np.ndarray | None = None) -> None:
        """One epoch's metrics line (numbers only; NaN and Inf are left out) and an RGB uint8 picture."""
        step = int(line["epoch"])
        for key, value in line.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(scalar_tag(key), float(value), step)
        if picture is not None:
            self.writer.add_image("val/pictures", picture, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
