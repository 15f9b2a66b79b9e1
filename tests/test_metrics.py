"""Pose metrics against hand-computed cases and independent implementations (scipy, numpy,
torch.distributions)."""

import math

import numpy as np
import pytest
import scipy.io
import scipy.stats
import torch

from pose_toss.covariance import condition_gaussian
from pose_toss.metrics import (
    auroc,
    canonical_correlation,
    coverage,
    cue_metrics,
    cue_metrics_with_references,
    joint_mahalanobis2,
    major_axis_angle,
    pck,
    pose_metrics,
    sparsification,
    spearman,
    tac,
    tic_summary,
    torso_sizes,
)
from pose_toss.skeletons import LSP14


def random_spd(b, d, gen):
    a = torch.randn(b, d, d, generator=gen, dtype=torch.float64)
    return a @ a.transpose(1, 2) / d + 0.5 * torch.eye(d, dtype=torch.float64)


def test_pck_hand_case():
    # Two samples, two joints; sample 1's normaliser is 10 px, sample 2's is 20 px; threshold 0.2.
    errors = torch.tensor([[1.0, 3.0], [3.0, 5.0]], dtype=torch.float64)
    vis = torch.tensor([[1, 1], [1, 0]])
    overall, per_joint = pck(errors, vis, torch.tensor([10.0, 20.0], dtype=torch.float64), 0.2)
    # Thresholds 2 px and 4 px: hits are (1 <= 2), (3 > 2 miss), (3 <= 4); the 5 px joint is invisible.
    assert overall == pytest.approx(2 / 3)
    assert per_joint.tolist() == [1.0, 0.0]


def test_torso_size_uses_the_lsp_diagonal_and_falls_back():
    t = torch.zeros(2, 14, 2, dtype=torch.float64)
    t[:, LSP14.index("r_shoulder")] = torch.tensor([0.0, 0.0])
    t[:, LSP14.index("l_hip")] = torch.tensor([3.0, 4.0])
    t[:, LSP14.index("l_shoulder")] = torch.tensor([10.0, 0.0])
    t[:, LSP14.index("r_hip")] = torch.tensor([10.0, 8.0])
    vis = torch.ones(2, 14)
    vis[1, LSP14.index("r_hip")] = 0  # second sample: the other diagonal
    sizes = torso_sizes(t.reshape(2, -1), vis, LSP14)
    assert sizes.tolist() == [8.0, 5.0]  # left shoulder to right hip first, as LSP's evaluation
    vis[1, LSP14.index("l_hip")] = 0
    assert math.isnan(torso_sizes(t.reshape(2, -1), vis, LSP14)[1])


def test_torso_size_matches_the_lsp_reference_on_real_joints(shared_data):
    # LSP's reference PCK normalises by |joint 10 - joint 3| (1-based: left shoulder, right hip) of its
    # 14-joint order; computed here from the raw array, not through the skeleton's names.
    raw = scipy.io.loadmat(shared_data / "lsp" / "joints.mat")["joints"]  # 3 x 14 x 2000
    xy = torch.from_numpy(raw[:2].transpose(2, 1, 0).astype(np.float64))  # N x 14 x 2
    reference = (xy[:, 9] - xy[:, 2]).norm(dim=-1)
    sizes = torso_sizes(xy.reshape(len(xy), -1), torch.ones(len(xy), 14), LSP14)
    torch.testing.assert_close(sizes, reference)


def test_tic_summary_ranks_and_share_quartiles():
    svals = torch.tensor([[2.0, 2.0, 2.0, 2.0],  # all equal: rank 4, effective rank 4
                          [3.0, 0.0, 0.0, 0.0],  # one direction: 1 and 1
                          [1.0, 0.5, 1e-4, 0.0],  # 1e-4 is below 1e-3 of the largest: rank 2
                          [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # J = 0: rank 0
    share = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out = tic_summary(share, svals)
    p = np.array([1.0, 0.5, 1e-4]) / 1.5001
    entropy_rank = float(np.exp(-(p * np.log(p)).sum()))
    assert out["jacobian_rank_min"] == 0 and out["jacobian_full_rank"] == 4
    assert out["jacobian_rank_median"] == pytest.approx(1.5)  # ranks 4, 1, 2, 0
    effective = [4.0, 1.0, entropy_rank, 1.0]  # exp(0) = 1 for the zero J too
    assert out["jacobian_effective_rank_median"] == pytest.approx(float(np.median(effective)), rel=1e-9)
    q = np.quantile(share.numpy(), [0.25, 0.5, 0.75])
    assert [out["tic_share_q25"], out["tic_share_median"], out["tic_share_q75"]] == pytest.approx(q.tolist())

    if torch.cuda.is_available():  # the bench passes CUDA tensors (this once failed there: a CPU quantile grid)
        assert tic_summary(share.cuda(), svals.cuda()) == out


def test_coverage_hand_case():
    # Identity covariance: Mahalanobis^2 is the squared distance. Radii^2 at p = 0.5 is 2 ln 2 = 1.386.
    mean = torch.zeros(1, 4, dtype=torch.float64)
    cov = torch.eye(4, dtype=torch.float64).unsqueeze(0)
    target = torch.tensor([[1.0, 0.0, 1.2, 0.0]], dtype=torch.float64)  # d^2 = 1.0 and 1.44
    m2 = joint_mahalanobis2(mean, cov, target)
    assert m2.tolist()[0] == pytest.approx([1.0, 1.44])
    cov_levels = coverage(m2, torch.ones(1, 2), levels=(0.5, 0.9))
    assert cov_levels.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_mahalanobis_matches_numpy_on_correlated_blocks():
    gen = torch.Generator().manual_seed(0)
    cov = random_spd(5, 6, gen)
    mean, target = torch.randn(5, 6, generator=gen, dtype=torch.float64), torch.randn(5, 6, generator=gen,
                                                                                       dtype=torch.float64)
    m2 = joint_mahalanobis2(mean, cov, target).numpy()
    for b in range(5):
        for j in range(3):
            r = (target[b] - mean[b]).numpy()[2 * j: 2 * j + 2]
            block = cov[b].numpy()[2 * j: 2 * j + 2, 2 * j: 2 * j + 2]
            assert m2[b, j] == pytest.approx(r @ np.linalg.solve(block, r))


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 6, (200,), generator=gen).double()  # many ties
    y = x + torch.randn(200, generator=gen, dtype=torch.float64) * 2
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)


def test_auroc_hand_case_and_pair_count():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.75)  # pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4
    gen = torch.Generator().manual_seed(2)
    s = torch.randint(0, 10, (60,), generator=gen).double()
    lab = torch.rand(60, generator=gen) < 0.3
    pos, neg = s[lab], s[~lab]
    pairs = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert auroc(s, lab) == pytest.approx(float(pairs))
    assert math.isnan(auroc(s, torch.zeros(60, dtype=torch.bool)))


def test_sparsification_hand_case():
    err = torch.tensor([4.0, 3.0, 2.0, 1.0])
    perfect = sparsification(err, err, steps=4)
    assert perfect["ause"] == pytest.approx(0.0)
    # Oracle after removing 0, 1, 2, 3 of 4: means 2.5, 2, 1.5, 1 -> /2.5. Reversed order: 2.5, 3, 3.5, 4.
    rev = sparsification(-err, err, steps=4)
    assert rev["oracle"] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert rev["model"] == pytest.approx([1.0, 1.2, 1.4, 1.6])
    gaps = [0.0, 0.4, 0.8, 1.2]
    assert rev["ause"] == pytest.approx(0.25 * sum((a + b) / 2 for a, b in zip(gaps[:-1], gaps[1:], strict=True)))


def test_condition_gaussian_matches_the_2d_formula():
    mean = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    cov = torch.tensor([[[4.0, 1.2], [1.2, 1.0]]], dtype=torch.float64)
    cm, cc = condition_gaussian(mean, cov, torch.tensor([[False, True]]), torch.tensor([[0.0, 3.0]],
                                                                                      dtype=torch.float64))
    # x | y = 3: mean 1 + 1.2 / 1 * (3 - 2) = 2.2, variance 4 - 1.2^2 / 1 = 2.56.
    assert cm.tolist()[0] == pytest.approx([2.2, 3.0])
    assert cc[0, 0, 0].item() == pytest.approx(2.56)
    assert cc[0, 1].abs().max().item() == 0.0


def test_condition_gaussian_matches_numpy_for_mixed_patterns():
    gen = torch.Generator().manual_seed(3)
    cov = random_spd(4, 8, gen)
    mean = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    values = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    observed = torch.rand(4, 8, generator=gen) < 0.5
    observed[0] = False
    observed[1, :3] = True
    cm, cc = condition_gaussian(mean, cov, observed, values)
    for b in range(4):
        o = observed[b].numpy()
        a, s = ~o, cov[b].numpy()
        mu = mean[b].numpy().copy()
        if o.any():
            gain = s[np.ix_(a, o)] @ np.linalg.inv(s[np.ix_(o, o)])
            mu[a] = mu[a] + gain @ (values[b].numpy()[o] - mu[o])
            ref_cov = s[np.ix_(a, a)] - gain @ s[np.ix_(o, a)]
        else:
            ref_cov = s
        mu[o] = values[b].numpy()[o]
        np.testing.assert_allclose(cm[b].numpy(), mu, atol=1e-10)
        np.testing.assert_allclose(cc[b].numpy()[np.ix_(a, a)], ref_cov, atol=1e-10)


def test_tac_matches_an_explicit_inverse():
    gen = torch.Generator().manual_seed(4)
    b, j = 6, 4
    cov = random_spd(b, 2 * j, gen)
    mean = torch.randn(b, 2 * j, generator=gen, dtype=torch.float64)
    target = torch.randn(b, 2 * j, generator=gen, dtype=torch.float64)
    vis = torch.ones(b, j)
    vis[0, 1] = 0
    vis[1, :3] = 0  # one visible joint: nothing to condition on
    out = tac(mean, cov, target, vis).numpy()
    for n in range(b):
        for k in range(j):
            if not vis[n, k] or vis[n].sum() < 2:
                assert np.isnan(out[n, k])
                continue
            others = [c for q in range(j) if q != k and vis[n, q] for c in (2 * q, 2 * q + 1)]
            me = [2 * k, 2 * k + 1]
            s, mu, y = cov[n].numpy(), mean[n].numpy(), target[n].numpy()
            cond = mu[me] + s[np.ix_(me, others)] @ np.linalg.solve(s[np.ix_(others, others)], y[others] - mu[others])
            assert out[n, k] == pytest.approx(np.linalg.norm(cond - y[me]))


def test_pose_metrics_nll_and_truth_distances_against_torch_distributions():
    gen = torch.Generator().manual_seed(5)
    b, d = 8, 28
    cov = random_spd(b, d, gen) * 4
    mean = torch.randn(b, d, generator=gen, dtype=torch.float64) * 3 + 50
    target = mean + torch.randn(b, d, generator=gen, dtype=torch.float64) * 2
    vis = torch.ones(b, 14)
    vis[2, 5] = 0
    true_cov = random_spd(b, d, gen)
    true_mean = mean + 0.5
    m = pose_metrics(mean, cov, target, vis, LSP14, target_true=true_mean, cov_true=true_cov)
    nlls, kls = [], []
    for n in range(b):
        keep = torch.nonzero(vis[n].repeat_interleave(2)).flatten()
        p = torch.distributions.MultivariateNormal(mean[n, keep], cov[n][keep][:, keep])
        t = torch.distributions.MultivariateNormal(true_mean[n, keep], true_cov[n][keep][:, keep])
        nlls.append(-p.log_prob(target[n, keep]).item())
        kls.append(torch.distributions.kl_divergence(t, p).item())
    assert m["nll"] == pytest.approx(np.mean(nlls), rel=1e-5)
    assert m["kl_true_to_pred"] == pytest.approx(np.mean(kls), rel=1e-6)
    errors = (mean - target).reshape(b, 14, 2).norm(dim=-1)[vis.bool()]
    assert m["mean_joint_error"] == pytest.approx(errors.mean().item())
    assert m["mse"] == pytest.approx((errors**2).mean().item())
    assert 0 <= m["coverage@0.5"] <= m["coverage@0.9"] <= m["coverage@0.95"] <= 1
    assert len(m["per_joint"]["error"]) == 14
    heads = torch.full((b,), 6.0, dtype=torch.float64)  # PCKh@0.5: within 3 px
    with_heads = pose_metrics(mean, cov, target, vis, LSP14, head_sizes=heads)
    assert with_heads["pckh@0.5"] == pytest.approx((errors <= 3.0).double().mean().item())


def test_calibrated_gaussian_covers_at_its_nominal_levels():
    # Targets drawn from the predicted Gaussians: coverage must match p (binomial noise only).
    gen = torch.Generator().manual_seed(6)
    b, d = 1500, 28
    chol = torch.linalg.cholesky(random_spd(b, d, gen))
    mean = torch.zeros(b, d, dtype=torch.float64)
    target = (chol @ torch.randn(b, d, 1, generator=gen, dtype=torch.float64)).squeeze(-1)
    m = pose_metrics(mean, chol @ chol.transpose(1, 2), target, torch.ones(b, 14), LSP14)
    for p in (0.5, 0.9, 0.95):
        assert m[f"coverage@{p}"] == pytest.approx(p, abs=0.01)
    assert m["calibration_gap"] < 0.01
    # Doubling every covariance over-covers: a miscalibration the gap must show.
    over = pose_metrics(mean, 2 * chol @ chol.transpose(1, 2), target, torch.ones(b, 14), LSP14)
    assert over["coverage@0.5"] > 0.7 and over["calibration_gap"] > 0.1


def test_mean_pose_baseline_uses_the_training_mean_pose():
    from pose_toss.commands.eval import mean_pose_baseline
    from pose_toss.config import load_config
    from pose_toss.data.dataset import crop_labels
    from pose_toss.data.synthetic import SyntheticPoseDataset

    cfg = load_config(overrides=["data.synthetic.num_samples=40", "data.input_size=64"])
    train = SyntheticPoseDataset.from_config(cfg.data.synthetic, "train")
    labels = crop_labels([train.annotation(i) for i in range(40)], 64, cfg.data.padding)
    t, v = labels["targets"].reshape(40, 14, 2), labels["visibility"] > 0
    centre = np.stack([t[v[:, j], j].mean(axis=0) for j in range(14)])  # per joint, visible labels only
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 64, (5, 14, 2))
    vis = rng.random((5, 14)) > 0.2
    preds = {"target": torch.tensor(target.reshape(5, 28)), "visibility": torch.tensor(vis.astype(np.float32))}
    err, source = mean_pose_baseline(preds, cfg.data)
    assert source == "training set"
    assert err == pytest.approx(np.linalg.norm(target - centre, axis=-1)[vis].mean(), rel=1e-5)
    cfg.data.dataset = "lsp"  # no LSP files here: falls back to the evaluated set's own mean pose
    cfg.data.real.lsp_root = "/nonexistent"
    err, source = mean_pose_baseline(preds, cfg.data)
    own = np.stack([target[vis[:, j], j].mean(axis=0) for j in range(14)])
    assert source == "evaluated set"
    assert err == pytest.approx(np.linalg.norm(target - own, axis=-1)[vis].mean(), rel=1e-5)


def block_diag_cov(blocks):
    """B x J x 2 x 2 joint blocks -> B x 2J x 2J block-diagonal covariances."""
    return torch.stack([torch.block_diag(*b) for b in blocks])


def test_major_axis_angle_of_rotated_ellipses():
    for theta in (0.0, 0.3, 1.2, -0.7):
        r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
        block = r @ torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64)) @ r.T
        got = float(major_axis_angle(block))
        assert math.cos(got - theta) ** 2 == pytest.approx(1.0)  # the same axis, mod pi


def test_canonical_correlation_hand_case_and_scipy():
    # Joints 0 and 1 with identity marginals and cross block diag(0.6, -0.3): canonical correlations 0.6, 0.3.
    cov = torch.eye(6, dtype=torch.float64)
    cov[0, 2] = cov[2, 0] = 0.6
    cov[1, 3] = cov[3, 1] = -0.3
    rho = canonical_correlation(cov[None], torch.tensor([0, 1]), torch.tensor([1, 2]))
    assert rho[0, 0] == pytest.approx(0.6)
    assert rho[0, 1] == pytest.approx(0.0)
    # Against the definition: sqrt of the largest eigenvalue of C_aa^-1 C_ab C_bb^-1 C_ba (numpy).
    gen = torch.Generator().manual_seed(5)
    c = random_spd(3, 6, gen)
    got = canonical_correlation(c, torch.tensor([0, 2]), torch.tensor([2, 1]))
    cn = c.numpy()
    for n in range(3):
        for col, (a, b) in enumerate(((0, 2), (2, 1))):
            ia, ib = slice(2 * a, 2 * a + 2), slice(2 * b, 2 * b + 2)
            m = np.linalg.solve(cn[n][ia, ia], cn[n][ia, ib]) @ np.linalg.solve(cn[n][ib, ib], cn[n][ib, ia])
            assert got[n, col] == pytest.approx(math.sqrt(max(np.linalg.eigvals(m).real)), rel=1e-9)


def test_cue_metrics_hand_case():
    # Three joints, limbs (0, 1) and (1, 2); two samples. Sample 0: limb (0, 1) cued (strength 0.8),
    # sample 1: limb (1, 2) cued weakly (0.3). Truth: cued joints elongated along x, correlated along the limb.
    limbs = torch.tensor([[0, 1], [1, 2]])
    limb_cue = torch.tensor([[0.8, 0.0], [0.0, 0.3]])
    vis = torch.ones(2, 3)
    long_x, small = torch.diag(torch.tensor([9.0, 1.0])), torch.eye(2) * 0.5
    true = block_diag_cov([[long_x, long_x, small], [small, long_x, long_x]]).double()
    true[0, 0, 2] = true[0, 2, 0] = 4.5  # joints 0 and 1 of sample 0 share an x shift: correlation 0.5
    true[1, 2, 4] = true[1, 4, 2] = 4.5
    # Prediction: spread right for sample 0 and wrong for sample 1; axes along y where x is true.
    long_y = torch.diag(torch.tensor([1.0, 4.0]))
    pred = block_diag_cov([[long_y, long_y, torch.eye(2)], [torch.eye(2) * 3, torch.eye(2) * 2, torch.eye(2)]]).double()
    pred[0, 1, 3] = pred[0, 3, 1] = 2.0  # limb (0, 1) of sample 0 correlated along y: rho 0.5
    got = cue_metrics(pred, vis, limbs, limb_cue, true)
    # Spreads sqrt(tr): s0 = [sqrt5, sqrt5, sqrt2], s1 = [sqrt6, 2, sqrt2]; cued = [1,1,0], [0,1,1].
    # Within joints: joint 0 has positive sqrt5 against negative sqrt6 (0); joint 1 has no negative (left out);
    # joint 2 has positive sqrt2 against negative sqrt2 (a tie, 0.5). Mean over joints 0 and 2: 0.25.
    # (Pooled, 3.5 / 8: the joints' identity would count.)
    assert got["cue_auroc_spread"] == pytest.approx(0.25)
    # Strong (>= 0.5): joints 0 and 1 of sample 0; predicted axes y against true x: |cos| = 0.
    assert got["cue_axis_cos"] == pytest.approx(0.0, abs=1e-12)
    # Correlations: pred [[0.5, 0], [0, 0]], cued (0, 0) and (1, 1): positives {0.5, 0}, negatives {0, 0}:
    # 0.5 beats both (2), 0 ties both (0.5 + 0.5) -> 3 of 4.
    assert got["cue_corr_auroc"] == pytest.approx(3 / 4)
    assert cue_metrics(true, vis, limbs, limb_cue)["cue_corr_auroc"] == pytest.approx(1.0)
    # An invisible joint drops its joint and both of its limbs.
    vis[1, 2] = 0
    assert cue_metrics(pred, vis, limbs, limb_cue, true)["cue_corr_auroc"] == pytest.approx(
        auroc(torch.tensor([0.5, 0.0, 0.0]), torch.tensor([1, 0, 0])))


def test_expected_keypoint_similarity_is_the_monte_carlo_mean():
    """det(I + S/c)^(-1/2) against the mean of exp(-|e|^2 / (2c)) over 400 000 draws e ~ N(0, S)."""
    from pose_toss.metrics import expected_keypoint_similarity

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([2.0, 6.0, 15.0])[:, None, None]
    cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
    area = torch.tensor([900.0, 2500.0, 10000.0], dtype=torch.float64)
    sigmas = torch.tensor([0.026, 0.107], dtype=torch.float64)
    got = expected_keypoint_similarity(cov, area, sigmas)
    for i in range(3):
        for j in range(2):
            block = cov[i, 2 * j:2 * j + 2, 2 * j:2 * j + 2]
            e = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), block).sample(
                (400_000,))
            c = area[i] * (2 * sigmas[j]) ** 2
            mc = torch.exp(-(e**2).sum(-1) / (2 * c))
            assert abs(got[i, j] - mc.mean()) < 4 * mc.std() / 400_000**0.5 + 1e-4, (i, j)
    # A certain joint scores 1; an isotropic one has the 1-D closed form 1 / (1 + v / c).
    iso = torch.eye(4, dtype=torch.float64).expand(1, 4, 4) * 7.0
    c0 = 900.0 * (2 * 0.026) ** 2
    assert float(expected_keypoint_similarity(iso * 0, area[:1], sigmas)[0, 0]) == pytest.approx(1.0)
    assert float(expected_keypoint_similarity(iso, area[:1], sigmas)[0, 0]) == pytest.approx(1 / (1 + 7.0 / c0))


def test_within_joint_auroc_is_the_mean_of_per_joint_mann_whitney():
    from pose_toss.metrics import within_joint_auroc

    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    positives = torch.rand(60, 4, generator=gen) < 0.3
    scores = scores + positives.double()  # informative, differently per joint
    valid = torch.rand(60, 4, generator=gen) < 0.9
    positives[:, 3] = True  # joint 3 has no negative: left out
    want = []
    for j in range(3):
        ok = valid[:, j].numpy()
        pos, neg = scores[ok, j][positives[ok, j]].numpy(), scores[ok, j][~positives[ok, j]].numpy()
        want.append(scipy.stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
    assert within_joint_auroc(scores, positives, valid) == pytest.approx(np.mean(want), rel=1e-12)
    # A score that is a joint's identity: 0.5 within joints, though pooled it separates the joints.
    identity = torch.arange(4, dtype=torch.float64).expand(60, 4)
    on = torch.zeros(60, 4, dtype=torch.bool)
    on[:30, 2:] = True
    assert within_joint_auroc(identity, on, torch.ones(60, 4, dtype=torch.bool)) == pytest.approx(0.5)
    assert auroc(identity.reshape(-1), on.reshape(-1)) > 0.8


def test_cue_references_constant_identity_and_truth_on_a_hand_case():
    """The constant and the identity carry no per-image information: 0.5 on both AUROCs whatever the cues;
    the truth separates perfectly; the identity's axis |cos| is that of the x axis against the true axes."""
    limbs = torch.tensor([[0, 1], [1, 2]])
    limb_cue = torch.tensor([[0.8, 0.0], [0.0, 0.9], [0.0, 0.0], [0.7, 0.0]])
    vis = torch.ones(4, 3)
    theta = torch.tensor(0.6, dtype=torch.float64)
    r = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    long, small = r @ torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64)) @ r.T, torch.eye(2, dtype=torch.float64)
    true = block_diag_cov([[long, long, small], [small, long, long], [small, small, small],
                           [long, long, small]])
    for n, (a, b) in ((0, (0, 1)), (1, (1, 2)), (3, (0, 1))):
        true[n, 2 * a, 2 * b] = true[n, 2 * b, 2 * a] = 3.0
    constant = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    pred = true.clone()
    got = cue_metrics_with_references(pred, vis, limbs, limb_cue, true, constant)
    for name in ("constant", "identity"):
        assert got[f"cue_auroc_spread_{name}"] == pytest.approx(0.5)
        assert got[f"cue_corr_auroc_{name}"] == pytest.approx(0.5)
    assert got["cue_auroc_spread_true"] == pytest.approx(1.0) and got["cue_corr_auroc_true"] == pytest.approx(1.0)
    assert got["cue_auroc_spread"] == got["cue_auroc_spread_true"] and got["cue_axis_cos"] == pytest.approx(1.0)
    # The identity's major axis is x (angle 0); the constant's is y for every joint (its y variances are larger).
    assert got["cue_axis_cos_identity"] == pytest.approx(abs(math.cos(0.6)))
    assert got["cue_axis_cos_constant"] == pytest.approx(abs(math.sin(0.6)))
    assert "cue_axis_cos_true" not in got


def test_mean_residual_covariance_against_numpy_with_masks():
    from pose_toss.metrics import mean_residual_covariance

    rng = np.random.default_rng(0)
    n, j = 200, 3
    a = rng.normal(size=(2 * j, 2 * j))
    residual = rng.normal(size=(n, 2 * j)) @ a.T
    mean = rng.normal(size=(n, 2 * j)) * 10
    target = mean + residual
    vis = (rng.random((n, j)) < 0.8).astype(np.float64)
    target[vis.repeat(2, axis=1) == 0] = np.nan  # invisible targets hold anything
    got = mean_residual_covariance(torch.from_numpy(mean), torch.from_numpy(target), torch.from_numpy(vis)).numpy()
    m = vis.repeat(2, axis=1)
    want = np.zeros((2 * j, 2 * j))
    for p in range(2 * j):
        for q in range(2 * j):
            both = (m[:, p] > 0) & (m[:, q] > 0)
            want[p, q] = np.mean(residual[both, p] * residual[both, q])
    evals, evecs = np.linalg.eigh(want)  # pairwise means need not be PSD: the function projects them
    want = (evecs * np.maximum(evals, 1e-6 * np.maximum(evals, 0).mean())) @ evecs.T
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_cue_auroc_per_kind_against_mann_whitney():
    """Per cue kind: joints on a limb of that kind against joints on no cued limb, within each joint; joints on
    another kind's limb are left out. Checked against scipy on a random case built so each kind differs."""
    gen = torch.Generator().manual_seed(5)
    n, limbs = 80, torch.tensor([[0, 1], [1, 2], [3, 4]])
    kind = torch.randint(-1, 2, (n, 3), generator=gen)  # -1 clean, 0 or 1
    limb_cue = torch.where(kind >= 0, 0.5, 0.0).double()
    vis = torch.rand(n, 5, generator=gen) > 0.1
    # Spread grows on kind-0 limbs only: kind 0 separable, kind 1 not.
    var = 1.0 + torch.rand(n, 5, generator=gen, dtype=torch.float64)
    for l, (a, b) in enumerate(limbs.tolist()):
        var[:, a] += 2.0 * (kind[:, l] == 0)
        var[:, b] += 2.0 * (kind[:, l] == 0)
    cov = torch.diag_embed(var.repeat_interleave(2, dim=1))
    got = cue_metrics(cov, vis, limbs, limb_cue, limb_kind=kind, cue_kinds=("occluder", "blur"))
    spread = (2 * var).sqrt().numpy()
    on = np.zeros((n, 3, 5), bool)  # [sample, kind (0, 1, any), joint]
    for l, (a, b) in enumerate(limbs.tolist()):
        for k in range(2):
            on[:, k, a] |= (kind[:, l] == k).numpy()
            on[:, k, b] |= (kind[:, l] == k).numpy()
    any_cue = on[:, 0] | on[:, 1]
    for k, name in enumerate(("occluder", "blur")):
        values = []
        for j in range(5):
            ok = vis[:, j].numpy() & (on[:, k, j] | ~any_cue[:, j])
            pos, neg = spread[ok & on[:, k, j], j], spread[ok & ~on[:, k, j], j]
            if len(pos) and len(neg):
                values.append(scipy.stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
        assert got[f"cue_auroc_spread_{name}"] == pytest.approx(np.mean(values), rel=1e-12)
    assert got["cue_auroc_spread_occluder"] > 0.9 > got["cue_auroc_spread_blur"]
    # Without kinds, no per-kind numbers; the constant reference scores 0.5 per kind too.
    assert "cue_auroc_spread_occluder" not in cue_metrics(cov, vis, limbs, limb_cue)
    refs = cue_metrics_with_references(cov, vis, limbs, limb_cue, constant=torch.eye(10, dtype=torch.float64),
                                       limb_kind=kind, cue_kinds=("occluder", "blur"))
    assert refs["cue_auroc_spread_occluder_constant"] == pytest.approx(0.5)


def test_calibrated_covariance_is_the_residuals_second_moment_and_a_cue_reference():
    """E[r r^T | image] for y ~ N(truth, C): C + b b^T with b = truth - mean, checked by Monte-Carlo; as the
    ``_calibrated`` cue reference it scores its own spread sqrt(|b_j|^2 + tr C_jj), checked against scipy."""
    from pose_toss.metrics import calibrated_covariance

    gen = torch.Generator().manual_seed(11)
    a = torch.randn(2, 4, 4, generator=gen, dtype=torch.float64)
    true = a @ a.transpose(1, 2) + 0.2 * torch.eye(4, dtype=torch.float64)
    truth = torch.randn(2, 4, generator=gen, dtype=torch.float64) * 5
    mean = truth + torch.randn(2, 4, generator=gen, dtype=torch.float64)
    got = calibrated_covariance(mean, truth, true)
    for i in range(2):
        y = torch.distributions.MultivariateNormal(truth[i], true[i]).sample((200_000,))
        r = y - mean[i]
        assert torch.allclose(got[i], r.T @ r / len(r), atol=0.05 * float(got[i].abs().max()))
    # As a reference: 60 figures, 3 joints, one limb (0, 1); cued figures get larger true spreads.
    n, limbs = 60, torch.tensor([[0, 1]])
    cued = torch.rand(n, generator=gen) < 0.5
    scale = 1.0 + 2.0 * cued.double()
    true = torch.diag_embed(scale[:, None] * torch.ones(n, 6, dtype=torch.float64))
    truth = torch.zeros(n, 6, dtype=torch.float64)
    mean = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 2
    vis = torch.ones(n, 3, dtype=torch.bool)
    out = cue_metrics_with_references(torch.eye(6, dtype=torch.float64).expand(n, 6, 6), vis, limbs,
                                      cued.double()[:, None], true, calibrated=calibrated_covariance(mean, truth, true))
    spread = ((mean.reshape(n, 3, 2) ** 2).sum(-1) + 2 * scale[:, None]).sqrt().numpy()
    want = [scipy.stats.mannwhitneyu(spread[cued.numpy(), j], spread[~cued.numpy(), j]).statistic
            / (int(cued.sum()) * int((~cued).sum())) for j in (0, 1)]
    assert out["cue_auroc_spread_calibrated"] == pytest.approx(np.mean(want), rel=1e-12)
    assert out["cue_auroc_spread_true"] == pytest.approx(1.0)
