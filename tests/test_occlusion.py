"""The occlusion intervention: pairs of one figure with and without an occluder, and what is measured on them."""

import math

import numpy as np
import pytest
import torch

from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.engine.occlusion import (
    added_severities,
    coverage_by_probability,
    occlusion_pairs,
    occlusion_summary,
    summary_by_score_rise,
    summary_by_severity,
)


def test_scale_for_90_percent_against_the_chi_square_law():
    """A mean at the truth and a covariance k x the labels' own: the squared Mahalanobis distance is chi2_2 / k,
    so k' x cov holds 90 % exactly when k' = 1 / k; and a mean off the truth by d along x with isotropic labels
    (sigma 1) and cov = I: the 90 % quantile of |label - mean|^2 is that of a noncentral chi2_2 (scipy)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    n = 300
    a = rng.normal(size=(n, 2, 2))
    true_cov = torch.from_numpy(a @ a.transpose(0, 2, 1) + 0.5 * np.eye(2))
    truth = torch.from_numpy(rng.normal(size=(n, 2)) * 10)
    cov = true_cov.clone()
    cov[0::2] *= 0.25  # plain: 4x too small, needs x4
    cov[1::2] *= 2.0   # occluded: 2x too large, needs x0.5
    got = occlusion_summary(truth, cov, truth, true_cov, draws=400)
    assert got["scale_for_0.9_plain"] == pytest.approx(4.0, rel=0.03)
    assert got["scale_for_0.9_occluded"] == pytest.approx(0.5, rel=0.03)
    d = 2.0
    eye = torch.eye(2, dtype=torch.float64).expand(n, 2, 2)
    off = truth + torch.tensor([d, 0.0], dtype=torch.float64)
    got = occlusion_summary(off, eye, truth, eye, draws=400)
    want = scipy_stats.ncx2.ppf(0.9, df=2, nc=d**2) / (-2 * math.log(0.1))
    assert got["scale_for_0.9_occluded"] == pytest.approx(want, rel=0.03)
    # The factor does what it says: c x cov holds 90 % of the same labels.
    c = got["scale_for_0.9_plain"]
    assert occlusion_summary(off, c * eye, truth, eye, draws=400)["coverage@0.9_plain"] == pytest.approx(0.9, abs=0.002)


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
    assert added_severities(records) == [
        next(c.severity for c in records[2 * n + 1]["cues"] if c.kind == "occluder" and c.limb[1] == joint)
        for n, joint in enumerate(joints)]


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
    assert sum(g["pairs"] for g in got["by_severity"]) == 6 and "by_hidden_score_rise" not in got  # no head
    assert 0 <= got["coverage@0.9_occluded"] <= 1 and got["true_spread_ratio"] > 1


@pytest.mark.slow
def test_occlusion_check_with_the_flip_test_judges_the_merged_prediction():
    """With ``flip_coords`` the check scores the mixture of each crop's prediction and its mirror's, merged by
    hand here: mirror back (x -> W - 1 - x, left and right swapped), then moment-match the two Gaussians."""
    from pose_toss.config import load_config
    from pose_toss.data.dataset import PoseDataset
    from pose_toss.data.loading import make_loader
    from pose_toss.engine.occlusion import occlusion_check, occlusion_pairs
    from pose_toss.models import build_pose_model
    from pose_toss.skeletons import LSP14

    cfg = load_config(overrides=["data.input_size=64", "data.synthetic.image_size=64"])
    torch.manual_seed(0)
    model = build_pose_model("resnet18", 14, input_size=64, embed_dim=8, deconv_channels=16).eval()
    generator = SyntheticPoseDataset(20, 64, seed=0)
    flip = torch.from_numpy(LSP14.flip_coordinate_index.copy())
    got = occlusion_check(model, generator, cfg.data, torch.device("cpu"), pairs=5, flip_coords=flip)
    single = occlusion_check(model, generator, cfg.data, torch.device("cpu"), pairs=5)

    records, joints = occlusion_pairs(generator, 5)
    batch = next(iter(make_loader(PoseDataset.from_config(records, cfg.data, train=False, skeleton=LSP14), 10, None,
                                  shuffle=False)))
    images = batch["image"]
    with torch.no_grad():
        out, mirrored = model(images), model(images.flip(-1))
    rows, joint = torch.arange(10), torch.tensor(joints).repeat_interleave(2)
    twin = torch.tensor(LSP14.flip_index)[joint]  # the joint the mirrored crop calls by the other side's name

    def block(cov: torch.Tensor, j: torch.Tensor) -> torch.Tensor:  # each row's 2 x 2 block of joint j[row]
        coords = 2 * j[:, None] + torch.arange(2)
        return cov.double()[rows[:, None, None], coords[:, :, None], coords[:, None, :]]

    mean_a = out.mean.double().reshape(10, -1, 2)[rows, joint]
    mean_b = mirrored.mean.double().reshape(10, -1, 2)[rows, twin] * torch.tensor([-1.0, 1.0])
    mean_b[:, 0] += images.shape[-1] - 1
    cov_a = block(out.cov, joint)
    cov_b = block(mirrored.cov, twin) * torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    d = (mean_a - mean_b)[..., None]
    truth = batch["target_true"].double().reshape(10, -1, 2)[rows, joint]  # in the crop's pixels
    true_cov = block(batch["cov_true"], joint)
    want = occlusion_summary(0.5 * (mean_a + mean_b), 0.5 * (cov_a + cov_b) + 0.25 * d @ d.transpose(-1, -2),
                             truth, true_cov)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert got["error_plain"] != pytest.approx(single["error_plain"], rel=1e-6)  # the flip test changed the means


def test_coverage_by_the_heads_probability_groups_pairs_by_their_bin():
    """Pairs whose occluded prediction is the labels' own Gaussian hold 90 %; those predicted 4x too small hold
    P(chi2_2 <= 4.605 / 4). Each bin gets exactly its pairs, and an empty bin is left out."""
    rng = np.random.default_rng(2)
    pairs, joints_per_figure = 240, 3
    d = 2 * joints_per_figure
    a = rng.normal(size=(2 * pairs, d, d))
    true_cov = torch.from_numpy(a @ a.transpose(0, 2, 1) + np.eye(d))
    truth = torch.from_numpy(rng.normal(size=(2 * pairs, d)) * 5)
    probability = torch.from_numpy(np.repeat([0.1, 0.3, 0.95], pairs // 3))
    cov = true_cov.clone()
    small = torch.nonzero(probability < 0.8)[:, 0]
    cov[2 * small + 1] /= 4  # the occluded figure of every unsure pair: too small
    joints = rng.integers(0, joints_per_figure, pairs).tolist()
    preds = {"mean": truth, "cov": cov, "target_true": truth, "cov_true": true_cov}
    groups = coverage_by_probability(preds, joints, probability, draws=400)
    assert [(g["from"], g["to"], g["pairs"]) for g in groups] == [(0.0, 0.2, 80), (0.2, 0.5, 80), (0.8, 1.0, 80)]
    for g in groups:
        want = 0.9 if g["from"] == 0.8 else 1 - math.exp(-4.605 / 8)
        assert g["coverage@0.9_occluded"] == pytest.approx(want, abs=0.02)
        assert g["coverage@0.9_plain"] == pytest.approx(0.9, abs=0.02)


def _pairs_with_known_spreads(pairs: int, joints_per_figure: int, seed: int):
    """Hand-made predictions of ``pairs`` (plain, occluded) figures sharing one covariance B per pair, the means at
    the truth: the plain figure predicts B, the occluded one f B, and the labels' covariance is B and g B, f and g
    drawn in (0.5, 2). The spread rises exactly where f > 1, the exactly calibrated covariance's where g > 1."""
    rng = np.random.default_rng(seed)
    d = 2 * joints_per_figure
    a = rng.normal(size=(pairs, d, d))
    base = torch.from_numpy(a @ a.transpose(0, 2, 1) + np.eye(d)).repeat_interleave(2, 0)
    truth = torch.from_numpy(rng.normal(size=(pairs, d)) * 5).repeat_interleave(2, 0)
    factor, noise_factor = rng.uniform(0.5, 2.0, pairs), rng.uniform(0.5, 2.0, pairs)
    cov, true_cov = base.clone(), base.clone()
    cov[1::2] *= torch.from_numpy(factor)[:, None, None]
    true_cov[1::2] *= torch.from_numpy(noise_factor)[:, None, None]
    joints = rng.integers(0, joints_per_figure, pairs).tolist()
    preds = {"mean": truth, "cov": cov, "target_true": truth, "cov_true": true_cov}
    return preds, joints, factor, noise_factor, rng


def test_spread_rise_split_by_whether_the_heads_score_rose():
    """Each group's share of rising spreads is the share of its pairs whose factor exceeds 1, counted here with
    numpy; the two groups hold every pair once, and a group with no pairs is left out."""
    preds, joints, factor, _, rng = _pairs_with_known_spreads(300, 3, seed=5)
    rose = rng.random(300) < np.where(factor > 1, 0.9, 0.2)  # a detector that mostly agrees with the spread
    groups = summary_by_score_rise(preds, joints, torch.from_numpy(rose), draws=50)
    assert [(g["score_rose"], g["pairs"]) for g in groups] == [(True, int(rose.sum())), (False, int((~rose).sum()))]
    for g, pick in zip(groups, (rose, ~rose), strict=True):
        assert g["spread_rise"] == pytest.approx(float((factor[pick] > 1).mean()))
    only = summary_by_score_rise(preds, joints, torch.ones(300, dtype=torch.bool), draws=50)
    assert len(only) == 1 and only[0]["pairs"] == 300


def test_spread_rise_by_severity_bins_every_pair_once():
    """Severities drawn over the check's range: each third holds exactly the pairs numpy puts there (the top edge
    in the last), and its share of rising spreads and of the exactly calibrated covariance's are counted here."""
    preds, joints, factor, noise_factor, rng = _pairs_with_known_spreads(240, 2, seed=6)
    severity = rng.uniform(0.35, 1.0, 240)
    severity[:3] = [0.35, 1.0, 0.35 + 0.65 / 3]  # the edges
    groups = summary_by_severity(preds, joints, severity.tolist(), draws=50)
    edges = np.linspace(0.35, 1.0, 4)
    which = np.clip(np.searchsorted(edges, severity, side="right") - 1, 0, 2)
    assert [g["pairs"] for g in groups] == [int((which == k).sum()) for k in range(3)]
    assert which[0] == 0 and which[1] == 2 and which[2] == 1
    for k, g in enumerate(groups):
        assert (g["from"], g["to"]) == pytest.approx((edges[k], edges[k + 1]))
        assert g["spread_rise"] == pytest.approx(float((factor[which == k] > 1).mean()))
        assert g["calibrated_spread_rise"] == pytest.approx(float((noise_factor[which == k] > 1).mean()))
