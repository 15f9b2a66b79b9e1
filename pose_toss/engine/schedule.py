"""Learning-rate schedule: linear warm-up, then cosine decay, reduce-on-plateau or constant.

One object with ``state_dict`` / ``load_state_dict``, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math

import torch


class LRSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, kind: str = "cosine",
                 warmup_steps: int = 0, min_lr_ratio: float = 0.01, patience: int = 3, factor: float = 0.3) -> None:
        if kind not in ("cosine", "plateau", "constant"):
            raise ValueError(f"schedule must be cosine, plateau or constant, got {kind!r}")
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.total_steps = max(int(total_steps), 1)
        self.kind, self.warmup_steps, self.min_lr_ratio = kind, int(warmup_steps), min_lr_ratio
        self.patience, self.factor = patience, factor
        self.step_count = 0
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self._apply()

    def factor_at(self, step: int) -> float:
        warm = min(1.0, 0.01 + 0.99 * step / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine":
            progress = min(1.0, step / self.total_steps)
            decay = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        elif self.kind == "plateau":
            decay = self.plateau_scale
        else:
            decay = 1.0
        return warm * decay

    def _apply(self) -> None:
        f = self.factor_at(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_metric: float) -> None:
        """Plateau bookkeeping: drop the lr after ``patience`` epochs without a better metric."""
        if self.kind != "plateau" or not math.isfinite(val_metric):
            return
        if val_metric < self.best - 1e-4 * abs(self.best if math.isfinite(self.best) else 0.0):
            self.best, self.bad_epochs = val_metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_scale *= self.factor
                self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau_scale": self.plateau_scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()
