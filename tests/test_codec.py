import numpy as np
import torch

from pose_toss.data.codec import HeatmapCodec, soft_argmax


def test_round_trip_argmax_everywhere_inside():
    codec = HeatmapCodec(128, 4, 2.0)
    xy = np.random.default_rng(0).uniform(0, 127, (500, 2))
    dec, peak = codec.decode_argmax(codec.encode(xy, np.ones(500)))
    assert np.abs(codec.to_heatmap(dec) - codec.to_heatmap(xy)).max() < 0.1
    assert (peak > 0.5).all()


def test_round_trip_soft_argmax_away_from_border():
    codec = HeatmapCodec(128, 4, 2.0)
    margin = 3 * codec.sigma * codec.stride
    xy = np.random.default_rng(1).uniform(margin, 127 - margin, (500, 2))
    heat = torch.from_numpy(codec.encode(xy, np.ones(500)))
    dec = codec.soft_argmax(heat).numpy()
    assert np.abs(codec.to_heatmap(dec) - codec.to_heatmap(xy)).max() < 0.1


def test_invisible_and_off_map_joints_give_empty_maps():
    codec = HeatmapCodec(64, 4, 1.5)
    xy = np.array([[10.0, 10.0], [20.0, 20.0], [200.0, 5.0]])
    heat = codec.encode(xy, np.array([1, 0, 1]))
    assert heat[0].max() > 0.9 and heat[1].max() == 0 and heat[2].max() == 0
    assert heat.shape == (3, 16, 16)


def test_soft_argmax_logits_and_gradient():
    logits = torch.full((1, 2, 8, 8), -50.0, dtype=torch.float64)
    logits[0, 0, 3, 5] = 50.0
    logits[0, 1, 7, 0] = 50.0
    out = soft_argmax(logits, stride=4, beta=1.0)
    assert torch.allclose(out[0], torch.tensor([[5 * 4 + 1.5, 3 * 4 + 1.5], [1.5, 7 * 4 + 1.5]], dtype=out.dtype))
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: soft_argmax(h, 4, beta=1.3), (x,))
