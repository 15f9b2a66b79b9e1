"""The learning-rate schedule."""

import numpy as np
import pytest
import torch

from pose_toss.engine.schedule import LRSchedule


def test_schedule_warmup_cosine_and_plateau():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = LRSchedule(opt, total_steps=100, kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert s.lr == pytest.approx(0.01)
    for _ in range(5):
        s.step()
    cosine5 = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.05))
    assert s.lr == pytest.approx((0.01 + 0.99 * 0.5) * cosine5)
    state = s.state_dict()
    for _ in range(95):
        s.step()
    assert s.lr == pytest.approx(0.1)
    s.load_state_dict(state)
    assert s.lr == pytest.approx((0.01 + 0.99 * 0.5) * cosine5)

    plateau = LRSchedule(torch.optim.SGD([p], lr=1.0), 100, "plateau", 0, patience=1, factor=0.5)
    for metric in (5.0, 4.0, 4.5, 4.2):  # two epochs without improvement > patience 1 -> halve
        plateau.epoch_end(metric)
    assert plateau.lr == pytest.approx(0.5)
