"""The occlusion intervention: pairs of one figure with and without an occluder, and what is measured on them."""

import math

import numpy as np
import pytest
import torch

from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.engine.occlusion import occlusion_pairs, occlusion_summary


def test_pairs_differ_only_by_the_occluder_on_the_chosen_limb():
    gen = SyntheticPoseDataset(30, 64, seed=3)
    records, joints = occlusion_pairs(gen, 10, seed=1)
    assert len(records) == 20 and len(joints) == 10
    for n, joint in enumerate(joints):
        plain, occluded = records[2 * n], records[2 * n + 1]
        extra = [c for c in occluded["cues"] if c not in plain["cues"]]
        assert len(extra) == 1 and extra[0].kind == "occluder" and extra[0].limb[1] == joint
        assert 0.35 <= extra[0].severity <= 1.0
        assert np.array_equal(plain["joints_true"], occluded["joints_true"])
        assert (plain["image"] != occluded["image"]).any()
        b = 2 * joint  # the occluded joint's label noise grows along the limb
        assert np.trace(occluded["cov_true"][b:b + 2, b:b + 2]) > np.trace(plain["cov_true"][b:b + 2, b:b + 2])


def test_summary_against_the_chi_square_law():
    """Predicting the labels' own Gaussian covers 90 % of them; a covariance 4x too large covers
    P(chi2_2 <= 4.605 x 4) and one 4x too small P(chi2_2 <= 4.605 / 4) = 1 - exp(-0.576)."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(size=(n, 2, 2))
    true_cov = torch.from_numpy(a @ a.transpose(0, 2, 1) + 0.5 * np.eye(2))
    truth = torch.from_numpy(rng.normal(size=(n, 2)) * 10)
    exact = occlusion_summary(truth, true_cov, truth, true_cov, draws=200)
    assert exact["coverage@0.9_plain"] == pytest.approx(0.9, abs=0.01)
    assert exact["coverage@0.9_occluded"] == pytest.approx(0.9, abs=0.01)
    big = occlusion_summary(truth, 4 * true_cov, truth, true_cov, draws=200)
    assert big["coverage@0.9_plain"] == pytest.approx(1 - math.exp(-4.605 * 2), abs=0.005)
    small = occlusion_summary(truth, true_cov / 4, truth, true_cov, draws=200)
    assert small["coverage@0.9_occluded"] == pytest.approx(1 - math.exp(-4.605 / 8), abs=0.01)
    # Spread ratios and the rise: pairs (plain, occluded) with the occluded prediction twice as wide.
    cov = true_cov.clone()
    cov[1::2] = cov[0::2] * 4
    got = occlusion_summary(truth, cov, truth, true_cov, draws=10)
    assert got["spread_rise"] == 1.0 and got["spread_ratio"] == pytest.approx(2.0)
    ratio = (torch.diagonal(true_cov[1::2], dim1=-2, dim2=-1).sum(-1) / torch.diagonal(true_cov[0::2], dim1=-2,
             dim2=-1).sum(-1)).sqrt().median()
    assert got["true_spread_ratio"] == pytest.approx(float(ratio))
    # The calibrated oracle: true_cov plus the mean's squared error. An occluded prediction pushed off the truth
    # by 3 px grows it whatever the predicted covariance says; pushed by nothing, it follows the true spreads.
    shifted = truth.clone()
    shifted[1::2] += torch.tensor([3.0, 0.0], dtype=torch.float64)
    oracle = occlusion_summary(shifted, cov, truth, true_cov, draws=10)
    tr = torch.diagonal(true_cov, dim1=-2, dim2=-1).sum(-1)
    want = ((tr[1::2] + 9.0).sqrt() > tr[0::2].sqrt()).double().mean()
    assert oracle["calibrated_spread_rise"] == pytest.approx(float(want))
    assert got["calibrated_spread_rise"] == pytest.approx(float((tr[1::2] > tr[0::2]).double().mean()))


@pytest.mark.slow
def test_occlusion_check_runs_on_a_model(tmp_path):
    from pose_toss.config import load_config
    from pose_toss.engine.occlusion import occlusion_check
    from pose_toss.models import build_pose_model

    cfg = load_config(overrides=["data.input_size=64", "data.synthetic.image_size=64"])
    torch.manual_seed(0)
    model = build_pose_model("resnet18", 14, input_size=64, embed_dim=8, deconv_channels=16, local_covariance=True)
    got = occlusion_check(model, SyntheticPoseDataset(20, 64, seed=0), cfg.data, torch.device("cpu"), pairs=6)
    assert got["pairs"] == 6 and 0 <= got["spread_rise"] <= 1
    assert 0 <= got["coverage@0.9_occluded"] <= 1 and got["true_spread_ratio"] > 1
