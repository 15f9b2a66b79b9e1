import numpy as np
import pytest
import torch

from pose_toss.covariance import (
    cholesky_from_vector,
    equal_mixture,
    full_covariance,
    hessian_gram,
    jacobian,
    mixture_moments,
    taylor_share,
    tic_covariance,
    transform_joint_rows,
    transform_joints,
    unmirror,
)

torch.manual_seed(0)
B, E, D, C = 5, 6, 8, 3


class Decoder(torch.nn.Module):
    """A smooth nonlinear decoder of (z, features), samples independent."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(E + C, 16).double()
        self.b = torch.nn.Linear(16, D).double()

    def forward(self, z, feats):
        return self.b(torch.tanh(self.a(torch.cat([z, feats], -1))))


@pytest.fixture(scope="module")
def problem():
    dec = Decoder()
    return dec, torch.randn(B, E, dtype=torch.float64), torch.randn(B, C, dtype=torch.float64)


def finite_differences(f, z, h=1e-5):
    cols = []
    for k in range(z.shape[1]):
        dz = torch.zeros_like(z)
        dz[:, k] = h
        cols.append((f(z + dz) - f(z - dz)) / (2 * h))
    return torch.stack(cols, -1)


def autograd_loop(f, z, feats):
    return torch.stack([torch.autograd.functional.jacobian(lambda zi, i=i: f(zi[None], feats[i:i + 1])[0], z[i])
                        for i in range(z.shape[0])])


@pytest.mark.parametrize("mode,chunk", [("batched", None), ("batched", 3), ("reverse", None), ("reverse", 2),
                                        ("forward", None), ("auto", None)])
def test_jacobian_matches_finite_differences_and_loop(problem, mode, chunk):
    dec, z, feats = problem
    jac = jacobian(dec, z, feats, mode=mode, chunk_size=chunk)
    assert jac.shape == (B, D, E) and not jac.requires_grad
    with torch.no_grad():
        fd = finite_differences(lambda zz: dec(zz, feats), z)
    assert torch.allclose(jac, fd, atol=1e-8)
    assert torch.allclose(jac, autograd_loop(dec, z, feats), atol=1e-12)


def test_jacobian_bad_input(problem):
    dec, z, feats = problem
    with pytest.raises(ValueError, match="batch size 2, expected 5"):
        jacobian(dec, z, feats[:2])
    with pytest.raises(ValueError, match="z must be B x E"):
        jacobian(dec, z[0], feats)
    with pytest.raises(ValueError, match="mode must be"):
        jacobian(dec, z, feats, mode="sideways")


def test_hessian_gram_matches_autograd(problem):
    dec, z, feats = problem
    gram = hessian_gram(dec, z, feats)
    for i in (0, 3):
        def output(zi, a, i=i):
            return dec(zi[None], feats[i:i + 1])[0, a]

        hs = torch.stack([torch.autograd.functional.hessian(lambda zi, a=a: output(zi, a), z[i]) for a in range(D)])
        assert torch.allclose(gram[i], torch.einsum("aij,bji->ab", hs, hs), atol=1e-10)


def test_tic_assembly_and_float32_under_autocast():
    jac = torch.randn(B, D, E)
    eps1 = torch.rand(B) + 0.5
    low = torch.tril(torch.randn(B, D, D))
    hess = torch.randn(B, D, D)
    hess = hess @ hess.transpose(-1, -2)
    eps2 = torch.rand(B)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cov = tic_covariance(jac.bfloat16(), eps1, low, eps2, hess, floor=0.01)
    assert cov.dtype == torch.float32
    expected = (eps1[:, None, None] ** 2 * jac.bfloat16().float() @ jac.bfloat16().float().transpose(1, 2)
                + low @ low.transpose(1, 2) + eps2[:, None, None] ** 2 * hess + 0.01 * torch.eye(D))
    assert torch.allclose(cov, expected, rtol=1e-5, atol=1e-4)


def test_taylor_share_is_the_traces_ratio():
    jac = torch.randn(B, D, E, dtype=torch.float64)
    eps1 = torch.rand(B, dtype=torch.float64) + 0.5
    low = torch.tril(torch.randn(B, D, D, dtype=torch.float64))
    cov = tic_covariance(jac, eps1, low, floor=0.01)
    assert cov.dtype == torch.float64  # kept when given
    share = taylor_share(jac, eps1, cov)
    for i in range(B):
        taylor = eps1[i] ** 2 * jac[i] @ jac[i].T
        assert share[i].item() == pytest.approx((torch.trace(taylor) / torch.trace(cov[i])).item(), rel=1e-12)
    assert (share > 0).all() and (share < 1).all()


def test_cholesky_parameterisation_is_positive_definite():
    vec = torch.randn(4, D * (D + 1) // 2) * 10
    low = cholesky_from_vector(vec, D, floor=1e-3)
    assert torch.equal(low, torch.tril(low)) and (torch.diagonal(low, dim1=1, dim2=2) > 0).all()
    cov = full_covariance(vec, D, floor=1e-3, scale=2.0)
    low0 = cholesky_from_vector(vec, D, floor=0.0)
    assert torch.allclose(cov, 4 * low0 @ low0.transpose(1, 2) + 1e-3 * torch.eye(D), rtol=1e-5, atol=1e-4)
    assert torch.linalg.eigvalsh(cov.double()).min() > 0
    assert cholesky_from_vector(vec.bfloat16(), D).dtype == torch.float32  # covariance math in float32 at least
    assert full_covariance(vec.double(), D).dtype == torch.float64  # and float64 kept


def _random_spd(n, d, gen):
    a = torch.randn(n, d, d, generator=gen, dtype=torch.float64)
    return a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)


def test_equal_mixture_matches_second_moments():
    gen = torch.Generator().manual_seed(3)
    ma, mb = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    ca, cb = _random_spd(4, 6, gen), _random_spd(4, 6, gen)
    mean, cov = equal_mixture(ma, ca, mb, cb)
    # E[x x^T] of a 50/50 mixture is the average of the components' second moments.
    second = 0.5 * (ca + ma[:, :, None] * ma[:, None, :]) + 0.5 * (cb + mb[:, :, None] * mb[:, None, :])
    torch.testing.assert_close(mean, 0.5 * (ma + mb))
    torch.testing.assert_close(cov, second - mean[:, :, None] * mean[:, None, :])


def test_mixture_moments_match_samples_of_the_mixture():
    # Three Gaussians in 3-d, equal weights: draw from the mixture itself (torch.distributions) and compare the
    # samples' mean and covariance with the moment-matched Gaussian, within a few Monte-Carlo standard errors.
    gen = torch.Generator().manual_seed(5)
    means = 2.0 * torch.randn(3, 3, generator=gen, dtype=torch.float64)
    covs = _random_spd(3, 3, gen)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((3,), 1 / 3, dtype=torch.float64)),
        torch.distributions.MultivariateNormal(means, covs))
    torch.manual_seed(6)
    x = mixture.sample((400_000,))
    mean, cov = mixture_moments(means, covs)
    torch.testing.assert_close(mean, x.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(cov, torch.cov(x.T), atol=0.0, rtol=0.02)
    assert torch.allclose(mean, mixture.mean) and torch.allclose(torch.diagonal(cov), mixture.variance)
    # Batched over leading dimensions, and two members give the flip test's equal mixture.
    m, c = mixture_moments(means[:2, None].expand(2, 4, 3), covs[:2, None].expand(2, 4, 3, 3))
    ref_mean, ref_cov = equal_mixture(means[:1], covs[:1], means[1:2], covs[1:2])
    torch.testing.assert_close(m, ref_mean.expand(4, 3))
    torch.testing.assert_close(c, ref_cov.expand(4, 3, 3))


def test_unmirror_is_the_mirror_map_on_samples():
    # Three joints, joint 0 <-> 2 swap sides; width 64 px. Map samples of N(mean, cov) through the mirror
    # by hand: the mapped samples' exact mean and covariance are what unmirror must return.
    gen = torch.Generator().manual_seed(4)
    flip = torch.tensor([4, 5, 2, 3, 0, 1])
    mean = torch.randn(2, 6, generator=gen, dtype=torch.float64) * 10 + 30
    cov = _random_spd(2, 6, gen)
    back, cov_back = unmirror(mean, cov, flip, 64)
    a = torch.zeros(6, 6, dtype=torch.float64)  # the linear part of the mirror: swap joints, negate x
    for i, j in enumerate(flip.tolist()):
        a[i, j] = -1.0 if i % 2 == 0 else 1.0
    shift = torch.tensor([63.0, 0.0] * 3, dtype=torch.float64)
    torch.testing.assert_close(back, mean @ a.T + shift)
    torch.testing.assert_close(cov_back, a @ cov @ a.T)
    twice = unmirror(back, cov_back, flip, 64)  # mirroring twice is the identity
    torch.testing.assert_close(twice[0], mean)
    torch.testing.assert_close(twice[1], cov)


def test_heatmap_moments_against_numpy():
    import numpy as np

    from pose_toss.covariance import heatmap_moments

    gen = torch.Generator().manual_seed(0)
    prob = torch.softmax(torch.randn(2, 3, 5 * 7, generator=gen, dtype=torch.float64) * 2, -1).reshape(2, 3, 5, 7)
    mean, cov = heatmap_moments(prob, stride=4)
    ys, xs = np.mgrid[0:5, 0:7] * 4 + 1.5  # pixel centres of a stride-4 map, as the soft-argmax reads them
    for b in range(2):
        for j in range(3):
            p = prob[b, j].numpy()
            pts = np.stack([xs.ravel(), ys.ravel()], 1)
            m = (p.ravel()[:, None] * pts).sum(0)
            c = ((pts - m).T * p.ravel()) @ (pts - m)
            assert np.allclose(mean[b, j].numpy(), m) and np.allclose(cov[b, j].numpy(), c)


def test_joint_patches_sample_around_each_joint_like_map_coordinates():
    import numpy as np
    from scipy.ndimage import map_coordinates

    from pose_toss.covariance import joint_patches

    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 40, 40, generator=gen, dtype=torch.float64)
    joints = torch.tensor([[[12.3, 20.0], [30.0, 7.5]], [[20.0, 20.0], [38.0, 39.0]]], dtype=torch.float64)
    patch, window = 8, 0.3
    got = joint_patches(images, joints, patch, window).reshape(2, 2, 3, patch, patch)
    # Patch pixel (r, c) sits at the joint + ((c, r) + 0.5) / patch * window * side - window * side / 2 (x, y).
    offs = ((np.arange(patch) + 0.5) / patch - 0.5) * window * 40
    for b in range(2):
        for j in range(2):
            x = joints[b, j, 0].item() + offs[None, :]
            y = joints[b, j, 1].item() + offs[:, None]
            for c in range(3):
                want = map_coordinates(images[b, c].numpy(), [y + 0 * x, x + 0 * y], order=1, mode="constant", cval=0.0)
                inside = (x + 0 * y >= 0) & (x + 0 * y <= 39) & (y + 0 * x >= 0) & (y + 0 * x <= 39)
                assert np.allclose(got[b, j, c].numpy()[inside], want[inside], atol=1e-12)


def test_scale_joints_is_s_cov_s():
    from pose_toss.covariance import scale_joints

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    log_scale = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    s = torch.diag_embed(log_scale.exp().repeat_interleave(2, dim=1))
    assert torch.allclose(scale_joints(cov, log_scale), s @ cov @ s)
    assert scale_joints(cov, log_scale).dtype == torch.float64


def test_transform_joints_is_the_block_diagonal_congruence():
    """Per joint (log sx, log sy, shear): ``T cov T^T`` with T = blockdiag([[e^a, 0], [c, e^b]]), against scipy's
    block_diag in float64; zeros leave the covariance as it is; a B x J input is the scale of ``scale_joints``."""
    import scipy.linalg

    from pose_toss.covariance import scale_joints, transform_joints

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + torch.eye(8, dtype=torch.float64)
    local = torch.randn(3, 4, 3, generator=g, dtype=torch.float64)
    got = transform_joints(cov, local)
    for n in range(3):
        t = scipy.linalg.block_diag(*[np.array([[np.exp(x), 0.0], [c, np.exp(y)]]) for x, y, c in local[n].numpy()])
        np.testing.assert_allclose(got[n].numpy(), t @ cov[n].numpy() @ t.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(got).min() > 0
    torch.testing.assert_close(transform_joints(cov, torch.zeros(3, 4, 3, dtype=torch.float64)), cov)
    scale = torch.randn(3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(transform_joints(cov, scale), scale_joints(cov, scale))


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 3)])
def test_transform_joint_rows_gives_the_factor_of_the_transformed_covariance(shape):
    """(T F)(T F)^T = T (F F^T) T^T for a factor F with the joints' coordinates as rows, both local forms."""
    gen = torch.Generator().manual_seed(3)
    factor = torch.randn(4, 10, 7, dtype=torch.float64, generator=gen)
    local = torch.randn(*shape, dtype=torch.float64, generator=gen)
    rows = transform_joint_rows(factor, local)
    torch.testing.assert_close(rows @ rows.transpose(1, 2), transform_joints(factor @ factor.transpose(1, 2), local))
    assert rows.dtype == torch.float64
