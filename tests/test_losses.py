import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pose_toss.losses import (
    beta_nll,
    faithful,
    gaussian_nll,
    kl_calibrated,
    mse,
    sqrtm_eigh,
    sqrtm_newton_schulz,
    w2_bound,
)
from pose_toss.metrics import kl_gaussian, w2_gaussian

gen = torch.Generator().manual_seed(0)


def spd(b, d, cond=None, dtype=torch.float64):
    q, _ = torch.linalg.qr(torch.randn(b, d, d, generator=gen, dtype=dtype))
    if cond is None:
        ev = torch.rand(b, d, generator=gen, dtype=dtype) * 5 + 0.2
    else:
        ev = torch.logspace(0, -np.log10(cond), d, dtype=dtype).expand(b, d) * 30
    return (q * ev.unsqueeze(-2)) @ q.transpose(-1, -2)


def test_nll_matches_torch_distributions():
    cov = spd(6, 8)
    mean, target = torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(6, 8, generator=gen)
    ref = -MultivariateNormal(mean, cov).log_prob(target.double())
    assert torch.allclose(gaussian_nll(mean, cov, target).double(), ref, rtol=1e-5, atol=1e-4)


def test_masked_nll_is_the_visible_block_nll():
    cov = spd(3, 8)
    mean, target = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]])
    got = gaussian_nll(mean, cov, target, mask)
    for i in range(3):
        keep = mask[i].repeat_interleave(2).bool()
        ref = -MultivariateNormal(mean[i][keep].double(), cov[i][keep][:, keep]).log_prob(target[i][keep].double())
        assert got[i].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-4)


def test_ill_conditioned_batch_is_jittered_and_counted():
    cov = spd(4, 6).float()
    v = torch.randn(4, 6, 1, generator=gen)
    cov[1] = (v[1] @ v[1].T)  # rank one: Cholesky fails
    stats = {}
    out = gaussian_nll(torch.zeros(4, 6), cov, torch.zeros(4, 6), stats=stats)
    assert torch.isfinite(out).all() and stats["cholesky_jitter"] == 1
    cov[2, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN or Inf in covariance \(samples \[2\]\)"):
        gaussian_nll(torch.zeros(4, 6), cov, torch.zeros(4, 6))


def test_nll_runs_in_float32_under_autocast():
    cov, mean, target = spd(2, 4).float(), torch.randn(2, 4), torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gaussian_nll(mean.bfloat16(), cov.bfloat16(), target)
    assert out.dtype == torch.float32
    assert torch.allclose(out, gaussian_nll(mean.bfloat16().float(), cov.bfloat16().float(), target), atol=1e-5)


@pytest.mark.parametrize("cond", [1.0, 1e2, 1e4])
def test_newton_schulz_root_matches_eigendecomposition(cond):
    a = spd(8, 28, cond=cond)
    root = sqrtm_newton_schulz(a.float())
    assert root.dtype == torch.float32
    ref = sqrtm_eigh(a)
    rel = (root.double() - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1))
    assert rel.max() < 1e-4


def test_newton_schulz_gradient_matches_finite_differences():
    a = spd(2, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: sqrtm_newton_schulz(0.5 * (m + m.transpose(-1, -2)), iters=60, tol=0),
                                    (a,), eps=1e-6, atol=1e-5)


def test_w2_bound_upper_bounds_exact_w2_with_equality_when_commuting():
    s1, s2 = spd(16, 6), spd(16, 6)
    m1 = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    m2 = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    bound = w2_bound(m1, s1, m2, s2).double()
    exact = w2_gaussian(m1, s1, m2, s2)
    assert (bound >= exact - 1e-3).all() and (bound > exact + 1e-3).any()
    q, _ = torch.linalg.qr(torch.randn(16, 6, 6, generator=gen, dtype=torch.float64))
    c1 = (q * (torch.rand(16, 1, 6, generator=gen, dtype=torch.float64) + 0.5)) @ q.transpose(1, 2)
    c2 = (q * (torch.rand(16, 1, 6, generator=gen, dtype=torch.float64) + 0.5)) @ q.transpose(1, 2)
    assert torch.allclose(w2_bound(m1, c1, m2, c2).double(), w2_gaussian(m1, c1, m2, c2), rtol=1e-4, atol=1e-4)
    # precomputed target root gives the same value
    assert torch.allclose(w2_bound(m1, s1, m2, target_sqrt=sqrtm_eigh(s2)), w2_bound(m1, s1, m2, s2), rtol=1e-5)


def test_w2_gaussian_matches_scipy():
    from scipy.linalg import sqrtm

    s1, s2 = spd(3, 5), spd(3, 5)
    m1, m2 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    got = w2_gaussian(m1, s1, m2, s2)
    for i in range(3):
        a, b = s1[i].numpy(), s2[i].numpy()
        rb = sqrtm(b)
        ref = ((m1[i] - m2[i]) ** 2).sum().item() + np.trace(a + b - 2 * np.real(sqrtm(rb @ a @ rb)))
        assert got[i].item() == pytest.approx(ref, rel=1e-8)


def test_w2_bound_masks_with_zero_padding_contribution():
    s1, s2 = spd(2, 6).float(), spd(2, 6).float()
    m1, m2 = torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    got = w2_bound(m1, s1, m2, s2, mask)
    keep = torch.tensor([1, 1, 0, 0, 1, 1], dtype=torch.bool)
    ref = w2_bound(m1[:1, keep], s1[:1][:, keep][:, :, keep], m2[:1, keep], s2[:1][:, keep][:, :, keep])
    assert got[0].item() == pytest.approx(ref.item(), rel=1e-4)


def test_masked_w2_root_is_the_root_of_the_visible_block_hand_case():
    # Two joints, the second invisible; the target correlates the x coordinates of both (4 and 4, cov 3).
    # Visible block diag(4, 1): root diag(2, 1). Prediction: identity at the target mean. By hand the
    # bound is |I - diag(2, 1)|^2 = 1. The visible block of the full root has (sqrt 7 + 1) / 2 = 1.82 in
    # place of 2 and would give 0.677.
    target_cov = torch.tensor([[[4.0, 0, 3, 0], [0, 1, 0, 0], [3, 0, 4, 0], [0, 0, 0, 1]]], dtype=torch.float64)
    mean = torch.zeros(1, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 0]])
    pred = torch.eye(4, dtype=torch.float64)[None]
    full_root = sqrtm_eigh(target_cov)
    assert full_root[0, 0, 0].item() == pytest.approx((7**0.5 + 1) / 2)
    by_root = w2_bound(mean, pred, mean, target_cov, mask, target_sqrt=full_root)
    by_cov = w2_bound(mean, pred, mean, target_cov, mask)
    assert by_root.item() == pytest.approx(1.0, abs=1e-6) and by_cov.item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="1 samples have invisible coordinates"):
        w2_bound(mean, pred, mean, mask=mask, target_sqrt=full_root)


def test_masked_w2_bound_matches_scipy_on_correlated_masks():
    from scipy.linalg import sqrtm

    b, j = 6, 7
    pred, target_cov = spd(b, 2 * j), spd(b, 2 * j)  # dense: visible and invisible joints correlated
    mean = torch.randn(b, 2 * j, generator=gen, dtype=torch.float64)
    target = torch.randn(b, 2 * j, generator=gen, dtype=torch.float64)
    mask = (torch.rand(b, j, generator=gen) > 0.3).int()
    mask[0] = 1  # one fully visible sample keeps the precomputed root
    mask[1, :3] = 0
    got = w2_bound(mean, pred, target, target_cov, mask, target_sqrt=sqrtm_eigh(target_cov))
    assert got.dtype == torch.float64  # float64 kept when given
    for i in range(b):
        keep = mask[i].repeat_interleave(2).bool().numpy()
        p, t = pred[i].numpy()[np.ix_(keep, keep)], target_cov[i].numpy()[np.ix_(keep, keep)]
        ref = ((mean[i] - target[i]).numpy()[keep] ** 2).sum() + ((np.real(sqrtm(p)) - np.real(sqrtm(t))) ** 2).sum()
        assert got[i].item() == pytest.approx(ref, rel=1e-5)


def test_kl_gaussian_matches_torch_distributions():
    s1, s2 = spd(4, 5), spd(4, 5)
    m1, m2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ref = kl_divergence(MultivariateNormal(m1, s1), MultivariateNormal(m2, s2))
    assert torch.allclose(kl_gaussian(m1, s1, m2, s2), ref, rtol=1e-8)


def test_kl_calibrated_optimum_is_half_prior_plus_truth():
    """1-D: labels y ~ N(0, truth), prior p; the expected loss over sigma^2 is smallest at (p + truth) / 2."""
    truth, prior = 2.0, 0.5
    y = torch.randn(200_000, 1, generator=gen) * truth**0.5
    grid = torch.linspace(0.5, 2.5, 401)
    losses = [kl_calibrated(torch.zeros(1, 2), torch.eye(2)[None] * v, torch.cat([y[:2000], y[:2000]], 1)[:, :2],
                            torch.eye(2)[None] * prior).mean() for v in grid]
    best = grid[int(torch.stack(losses).argmin())].item()
    emp = y[:2000].pow(2).mean().item()
    assert best == pytest.approx((prior + emp) / 2, abs=0.01)
    assert abs(best - (prior + truth) / 2) < 0.2


def test_beta_nll_and_faithful():
    mean = torch.randn(3, 4, generator=gen, requires_grad=True)
    var = torch.rand(3, 4, generator=gen) + 0.5
    cov = torch.diag_embed(var).requires_grad_(True)
    target = torch.randn(3, 4, generator=gen)
    ref = -Normal(mean, var.sqrt()).log_prob(target).sum(-1)
    assert torch.allclose(beta_nll(mean, cov, target, beta=0.0), ref, rtol=1e-5)
    g_beta = torch.autograd.grad(beta_nll(mean, cov, target, beta=0.5).sum(), mean)[0]
    g_nll = torch.autograd.grad(ref.sum(), mean)[0]
    assert torch.allclose(g_beta, g_nll * var**0.5, rtol=1e-5)
    f = faithful(mean, cov, target)
    g_mean, g_cov = torch.autograd.grad(f.sum(), (mean, cov))
    assert torch.allclose(g_mean, torch.autograd.grad(mse(mean, target).sum(), mean)[0])  # only MSE moves the mean
    assert torch.allclose(g_cov, torch.autograd.grad(gaussian_nll(mean.detach(), cov, target).sum(), cov)[0])


# -- masked coordinates never reach the arithmetic; non-finite and non-covariance inputs are refused ----------


def _visible_block(x, keep):
    return x[..., keep][..., keep, :] if x.dim() == 2 else x[keep]


def _loss(name, mean, cov, target, label, mask):
    from pose_toss.losses import loss_prediction

    if name == "nll":
        return gaussian_nll(mean, cov, target, mask)
    if name == "mse":
        return mse(mean, target, mask)
    if name == "beta_nll":
        return beta_nll(mean, cov, target, mask)
    if name == "faithful":
        return faithful(mean, cov, target, mask)
    if name == "kl_calibrated":
        return kl_calibrated(mean, cov, target, label, mask)
    if name == "w2_bound":
        return w2_bound(mean, cov, target, label, mask)
    return loss_prediction(mean, cov, target, mask)


def test_fuzz_masked_junk_never_reaches_any_loss():
    """Random masks, with NaN / Inf / 1e30 in every invisible coordinate of the target (and of the pseudo-label
    covariance): each loss equals the same loss with zeros there, the NLL equals torch.distributions' on the
    visible block, the W2 bound the visible blocks' own (scipy), and every gradient is finite."""
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(7)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
    for trial in range(12):
        b, j = 3, int(torch.randint(2, 6, (1,), generator=g))
        d = 2 * j
        mask = (torch.rand(b, j, generator=g) > 0.4).float()
        mask[:, 0] = 1.0  # at least one visible joint per sample
        coords = mask.repeat_interleave(2, dim=1).bool()
        mean = torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_()
        cov = spd(b, d).requires_grad_()
        clean = torch.randn(b, d, generator=g, dtype=torch.float64)
        dirty = torch.where(coords, clean, junk[torch.randint(0, 4, (b, d), generator=g)].double())
        label = spd(b, d)
        label_dirty = torch.where(coords.unsqueeze(-1) & coords.unsqueeze(-2), label, float("nan"))
        for name in ("nll", "mse", "beta_nll", "faithful", "kl_calibrated", "w2_bound", "loss_prediction"):
            got = _loss(name, mean, cov, dirty, label_dirty, mask)
            assert torch.isfinite(got).all(), (trial, name)
            torch.testing.assert_close(got, _loss(name, mean, cov, torch.where(coords, clean, 0.0), label, mask),
                                       msg=f"{trial} {name}")
            grads = torch.autograd.grad(got.sum(), (mean, cov), allow_unused=True)
            assert all(gr is None or torch.isfinite(gr).all() for gr in grads), (trial, name)
        nll = gaussian_nll(mean, cov, dirty, mask)
        w2 = w2_bound(mean, cov, dirty, label_dirty, mask)
        for i in range(b):
            keep = coords[i].nonzero().flatten()
            mvn = MultivariateNormal(mean[i, keep].detach(), cov[i].detach()[keep][:, keep])
            assert nll[i].item() == pytest.approx(-mvn.log_prob(clean[i, keep]).item(), rel=1e-9)
            c_vv, t_vv = cov[i].detach()[keep][:, keep].numpy(), label[i][keep][:, keep].numpy()
            ref = ((clean[i, keep] - mean[i, keep].detach()) ** 2).sum().item() + \
                np.sum((np.real(sqrtm(c_vv)) - np.real(sqrtm(t_vv))) ** 2)
            assert w2[i].item() == pytest.approx(ref, rel=1e-5)


def test_pseudo_labels_ignore_whatever_invisible_targets_hold():
    from pose_toss.pseudo_labels import pseudo_covariances

    g = torch.Generator().manual_seed(3)
    emb = torch.randn(200, 5, generator=g)
    targets = torch.randn(200, 8, generator=g) * 10
    masks = (torch.rand(200, 4, generator=g) > 0.3).float()
    coords = masks.repeat_interleave(2, dim=1).bool()
    dirty = torch.where(coords, targets, float("nan"))
    for centre in (True, False):
        ref, ref_root = pseudo_covariances(emb, torch.where(coords, targets, 0.0), k=16, masks=masks, centre=centre)
        got, got_root = pseudo_covariances(emb, dirty, k=16, masks=masks, centre=centre)
        assert torch.isfinite(got).all() and torch.isfinite(got_root).all()
        torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="targets hold NaN or Inf; pass masks"):
        pseudo_covariances(emb, dirty, k=16)


def test_non_finite_inputs_raise_naming_the_argument():
    from pose_toss.covariance import CovarianceInputError, condition, equal_mixture, unmirror

    mean, cov, target = torch.zeros(2, 4), spd(2, 4).float(), torch.zeros(2, 4)
    bad_mean = mean.clone()
    bad_mean[1, 2] = float("nan")
    bad_cov = cov.clone()
    bad_cov[0, 1, 1] = float("inf")
    cases = [
        (lambda: gaussian_nll(bad_mean, cov, target), r"NaN or Inf in residual \(samples \[1\]\)"),
        (lambda: mse(bad_mean, target), r"mse: NaN or Inf in residual \(samples \[1\]\)"),
        (lambda: w2_bound(mean, bad_cov, target, cov), r"w2_bound: NaN or Inf in covariance \(samples \[0\]\)"),
        (lambda: w2_bound(mean, cov, target, bad_cov), r"w2_bound: NaN or Inf in target_covariance \(samples \[0\]\)"),
        (lambda: kl_calibrated(mean, cov, target, bad_cov),
         r"kl_calibrated: NaN or Inf in prior_cov \(samples \[0\]\)"),
        (lambda: beta_nll(bad_mean, cov, target), r"beta_nll: NaN or Inf in residual \(samples \[1\]\)"),
        (lambda: unmirror(bad_mean, cov, torch.arange(4), 64), r"unmirror: NaN or Inf in mean \(samples \[1\]\)"),
        (lambda: equal_mixture(mean, bad_cov, mean, cov), r"equal_mixture: NaN or Inf in cov_a \(samples \[0\]\)"),
        (lambda: condition(bad_mean[1], cov[0], {0: (1.0, 2.0)}), r"condition_gaussian: NaN or Inf in mean"),
        (lambda: condition(mean[0], cov[0], {0: (float("nan"), 2.0)}), r"condition_gaussian: NaN or Inf in values"),
    ]
    for fn, message in cases:
        with pytest.raises(CovarianceInputError, match=message):
            fn()
    with pytest.raises(ValueError, match=r"observed joint 0: expected an \(x, y\) pair of numbers, got 'big'"):
        condition(mean[0], cov[0], {0: "big"})


def test_nll_refuses_matrices_that_are_not_covariances():
    from pose_toss.covariance import CovarianceInputError

    z = torch.zeros(2, 4)
    minus_identity = -torch.eye(4).expand(2, 4, 4)
    with pytest.raises(CovarianceInputError, match=r"not positive semi-definite in samples \[0, 1\] \(smallest "
                                                   r"eigenvalue -1\)"):
        gaussian_nll(z, minus_identity, z)
    asymmetric = spd(2, 4).float()
    asymmetric[1, 0, 3] += 1.0
    with pytest.raises(CovarianceInputError, match=r"covariance is not symmetric in samples \[1\]"):
        gaussian_nll(z, asymmetric, z)
    # Round-off is still rescued: a PSD rank-one matrix gets its jitter (test above), and so does a float32
    # matrix a hair below zero.
    nearly = spd(2, 4).float()
    nearly[0] = nearly[0] - (torch.linalg.eigvalsh(nearly[0])[0] + 1e-7) * torch.eye(4)
    assert torch.isfinite(gaussian_nll(z, nearly, z)).all()
