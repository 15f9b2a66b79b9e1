"""engine/runtime.py: the CUDA-graph replay of a model's forward against the eager forward."""

from __future__ import annotations

import pytest
import torch

from pose_toss.engine.runtime import GraphedInference
from pose_toss.models import build_pose_model


def small_model(device: str = "cpu"):
    torch.manual_seed(0)
    model = build_pose_model("resnet10t", num_joints=14, embed_dim=8, input_size=64, deconv_channels=16,
                             cov_hidden=16).to(device)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64, device=device))  # sets TIC's running J scale, as training would
    return model.eval()


def test_graphs_need_cuda_images_and_an_eval_mode_model():
    model = small_model()
    with pytest.raises(ValueError, match="CUDA graphs need images on a CUDA device, got cpu"):
        GraphedInference(model, torch.rand(2, 3, 64, 64))


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [False, True])
def test_graph_replay_equals_the_eager_forward_for_new_images(amp):
    """Each call copies new images into the captured input: the replay gives the eager forward's mean and
    covariance for those images (float32: to rounding; bf16 autocast: to its precision), not the capture's."""
    model = small_model("cuda")
    first = torch.rand(3, 3, 64, 64, device="cuda")
    graphed = GraphedInference(model, first, amp=amp)
    for _ in range(2):
        images = torch.rand(3, 3, 64, 64, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            eager = model(images)
        replay = graphed(images)
        tol = {"rtol": 2e-2, "atol": 2e-2} if amp else {"rtol": 1e-4, "atol": 1e-4}
        torch.testing.assert_close(replay.mean, eager.mean, **tol)
        scale = float(eager.cov.abs().max())
        torch.testing.assert_close(replay.cov, eager.cov, rtol=tol["rtol"], atol=tol["atol"] * scale)
        assert not torch.allclose(replay.mean, model(first).mean)  # not the captured images' answer
    with pytest.raises(ValueError, match=r"captured for images \(3, 3, 64, 64\)"):
        graphed(torch.rand(2, 3, 64, 64, device="cuda"))
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        GraphedInference(model, first)
