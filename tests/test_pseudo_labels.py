import math

import numpy as np
import pytest
import torch

from pose_toss.pseudo_labels import effective_neighbours, knn, neighbour_weights, pseudo_covariances, whiten


def test_blockwise_knn_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 5, generator=gen)
    full = torch.cdist(pts, pts) ** 2
    full.fill_diagonal_(float("inf"))
    ref_d, ref_i = full.topk(7, dim=1, largest=False)
    for block in (1, 17, 300, None):
        d, i = knn(pts, 7, block_size=block)
        assert torch.equal(i, ref_i)
        assert torch.allclose(d, ref_d, atol=1e-4)
    with pytest.raises(ValueError, match="k must be between 1 and N - 1 = 299"):
        knn(pts, 300)


def test_whitening_gives_mahalanobis_distances():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(500, 3, generator=gen) @ torch.tensor([[3.0, 0, 0], [1.0, 0.5, 0], [0, 0, 2.0]])
    u = whiten(z, shrinkage=0.0)
    s = torch.cov(z.T)
    d = z[0] - z[1]
    assert (u[0] - u[1]).pow(2).sum().item() == pytest.approx((d @ torch.linalg.solve(s, d)).item(), rel=1e-3)


def heteroscedastic_problem(n=20_000, seed=0):
    """y | z ~ N(A z, S(z)), S rotating and stretching smoothly with z."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 2, generator=gen) * 2 - 1
    a = torch.tensor([[1.0, -0.5], [0.3, 0.8], [0.0, 1.0], [0.5, 0.5]])
    theta = math.pi / 2 * z[:, 0]
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    big = torch.zeros(n, 4, 4)
    big[:, :2, :2] = rot @ torch.diag_embed(torch.stack([0.5 + 0.4 * z[:, 1], 0.1 + 0.05 * z[:, 0]], -1)) @ rot.mT
    big[:, 2:, 2:] = torch.diag_embed(torch.stack([0.2 + 0.15 * z[:, 1], 0.3 + 0 * z[:, 1]], -1))
    big[:, 0, 2] = big[:, 2, 0] = 0.02 * (1 + z[:, 1])  # cross-"joint" correlation, kept PD
    noise = (torch.linalg.cholesky(big) @ torch.randn(n, 4, 1, generator=gen)).squeeze(-1)
    return z, z @ a.T + noise, big


def test_recovers_input_dependent_covariance():
    z, y, truth = heteroscedastic_problem()
    cov, root = pseudo_covariances(z, y, k=64)
    rel = (cov - truth).norm(dim=(-2, -1)) / truth.norm(dim=(-2, -1))
    glob = torch.cov(y.T)  # one covariance for everything, the homoscedastic answer
    rel_glob = (glob - truth).norm(dim=(-2, -1)) / truth.norm(dim=(-2, -1))
    # 64 softmax-weighted neighbours: sampling error alone is about sqrt(2 / 64) ~ 0.18 per entry
    assert rel.median() < 0.3, rel.median()
    assert rel.median() < 0.4 * rel_glob.median(), (rel.median(), rel_glob.median())
    assert torch.allclose(root @ root, cov, atol=1e-4)
    assert torch.linalg.eigvalsh(cov).min() > 0


def test_masked_entries_never_leak_and_labels_stay_pd():
    z, y, _ = heteroscedastic_problem(3000, seed=2)
    masks = torch.ones(3000, 2)
    masks[::3, 1] = 0  # joint 1 (coordinates 2, 3) missing in a third of the samples
    garbage = y.clone()
    garbage[::3, 2:] = 1e6
    a, _ = pseudo_covariances(z, y, k=48, masks=masks)
    b, _ = pseudo_covariances(z, garbage, k=48, masks=masks)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.linalg.eigvalsh(a).min() > 0
    full, _ = pseudo_covariances(z, y, k=48, masks=torch.ones(3000, 2))
    plain, _ = pseudo_covariances(z, y, k=48)
    assert torch.allclose(full, plain, rtol=1e-4, atol=1e-5)
    no_root, none = pseudo_covariances(z, y, k=48, with_sqrt=False)
    assert none is None and torch.allclose(no_root, plain, rtol=1e-4, atol=1e-5)


def test_uncentred_labels_are_the_weighted_second_moment():
    # centre=False: sum_j w_ij r_j r_j^T over the k neighbours, checked by hand in numpy (with a floor of 0).
    gen = torch.Generator().manual_seed(4)
    z, r = torch.randn(60, 3, generator=gen), torch.randn(60, 4, generator=gen) + 2.0
    got, _ = pseudo_covariances(z, r, k=6, floor=0.0, centre=False, with_sqrt=False)
    dist, idx = knn(whiten(z), 6)
    w, _ = neighbour_weights(dist, 1.0)
    rn, wn, ix = r.numpy().astype(np.float64), w.numpy(), idx.numpy()
    for i in (0, 31, 59):
        want = sum(wn[i, j] * np.outer(rn[ix[i, j]], rn[ix[i, j]]) for j in range(6))
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-4, atol=1e-4)
    # The centred label is smaller by the weighted mean's outer product (a constant shift moves only the mean).
    centred, _ = pseudo_covariances(z, r, k=6, floor=0.0, with_sqrt=False)
    shifted, _ = pseudo_covariances(z, r + 5.0, k=6, floor=0.0, with_sqrt=False)
    assert torch.allclose(centred, shifted, atol=1e-3)
    masked, _ = pseudo_covariances(z, r, k=6, floor=0.0, centre=False, masks=torch.ones(60, 2))
    assert torch.allclose(masked, got, rtol=1e-4, atol=1e-4)


def test_neighbour_weights_are_the_papers_softmax_or_median_scaled():
    d = torch.tensor([[0.5, 1.0, 4.0, 9.0], [2.0, 2.0, 2.0, 3.0]], dtype=torch.float64)
    for temperature, tau in ((1.0, 1.0), (2.5, 2.5), ("median", float(np.median(d.numpy()))), (None, 2.0)):
        w, used = neighbour_weights(d, temperature)
        e = np.exp(-d.numpy() / tau)
        np.testing.assert_allclose(w.numpy(), e / e.sum(1, keepdims=True), rtol=1e-12)
        assert used == pytest.approx(tau)
    assert effective_neighbours(torch.full((3, 8), 1 / 8)).tolist() == pytest.approx([8.0] * 3)
    assert effective_neighbours(torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0]])).tolist() == pytest.approx([1.0, 2.0])
    for bad in ("mean", 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be a positive number or 'median'"):
            neighbour_weights(d, bad)


def test_pseudo_label_stats_report_the_weights_used():
    gen = torch.Generator().manual_seed(3)
    # In 16 whitened dimensions squared neighbour distances are many units apart: the paper's tau = 1
    # concentrates on the nearest few (distances are scale-free, so only the dimension sets the regime).
    z, y = torch.randn(2000, 16, generator=gen), torch.randn(2000, 4, generator=gen)
    for temperature in (1.0, "median"):
        stats: dict = {}
        pseudo_covariances(z, y, k=32, temperature=temperature, stats=stats)
        dist, _ = knn(whiten(z), 32)
        w, tau = neighbour_weights(dist, temperature)
        assert stats["temperature"] == pytest.approx(tau)
        assert stats["effective_neighbours"] == pytest.approx(float((1 / (w.double() ** 2).sum(1)).mean()))
        if temperature == "median":
            assert stats["effective_neighbours"] > 25  # nearly uniform over the 32
        else:
            assert stats["effective_neighbours"] < 25


def test_bad_input():
    with pytest.raises(ValueError, match="10 embeddings but 9 targets"):
        pseudo_covariances(torch.randn(10, 2), torch.randn(9, 4), k=3)


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_labels_equal_unchunked(masked):
    """Rows labelled in chunks (any N fits the device, cuSOLVER's batched eigh included) give the same labels
    and roots as one pass, bit for bit."""
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(300, 6, generator=g)
    targets = torch.randn(300, 8, generator=g) * 5
    masks = (torch.rand(300, 4, generator=g) > 0.2).float() if masked else None
    whole, whole_root = pseudo_covariances(emb, targets, k=12, masks=masks, chunk_size=300)
    for chunk in (1, 7, 128, 299):
        cov, root = pseudo_covariances(emb, targets, k=12, masks=masks, chunk_size=chunk)
        assert torch.equal(cov, whole) and torch.equal(root, whole_root), chunk
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        pseudo_covariances(emb, targets, k=12, chunk_size=0)


@pytest.mark.cuda
def test_a_bank_of_100000_runs_on_cuda():
    """100 000 28 x 28 labels at once made cuSOLVER's batched eigh fail (CUSOLVER_STATUS_INTERNAL_ERROR);
    in chunks they are computed, and agree with the CPU's on a sample of rows."""
    g = torch.Generator().manual_seed(0)
    emb, targets = torch.randn(100_000, 16, generator=g), torch.randn(100_000, 28, generator=g) * 5
    cov, root = pseudo_covariances(emb.cuda(), targets.cuda(), k=32)
    assert torch.isfinite(cov).all() and torch.isfinite(root).all()
    rows = torch.arange(0, 100_000, 9973)
    cpu_cov, _ = pseudo_covariances(emb, targets, k=32, with_sqrt=False)
    torch.testing.assert_close(cov[rows].cpu(), cpu_cov[rows], rtol=1e-3, atol=1e-3)


def test_each_row_gets_the_temperature_for_its_effective_neighbours():
    from pose_toss.pseudo_labels import temperature_for_neighbours

    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(50, 20, generator=gen, dtype=torch.float64).cumsum(1) * torch.rand(50, 1, generator=gen) * 30
    for target in (1.5, 6.0, 19.0):
        weights, _ = neighbour_weights(dist, effective=target)
        assert torch.allclose(effective_neighbours(weights), torch.full((50,), target, dtype=torch.float64), rtol=1e-6)
    tau = temperature_for_neighbours(dist, 6.0)
    # The weights are the plain softmax at each row's own temperature.
    want = torch.softmax(-dist / tau[:, None], dim=1)
    torch.testing.assert_close(neighbour_weights(dist, effective=6.0)[0], want)
    with pytest.raises(ValueError, match="between 1 and k = 20"):
        temperature_for_neighbours(dist, 25.0)


def test_joint_scaled_labels_against_numpy():
    """Each joint's block is rescaled to its own neighbours' weighted second moment, found on that joint's
    descriptor alone; correlations stay as they were."""
    from pose_toss.pseudo_labels import joint_scaled_labels

    rng = np.random.default_rng(0)
    n, j, k = 40, 3, 6
    descriptors = torch.from_numpy(rng.normal(size=(n, j, 4)))
    values = torch.from_numpy(rng.normal(size=(n, 2 * j)) * 3)
    a = rng.normal(size=(n, 2 * j, 2 * j))
    cov = torch.from_numpy(a @ a.transpose(0, 2, 1) + np.eye(2 * j))
    got = joint_scaled_labels(cov, descriptors.float(), values, k, temperature="median", centre=False,
                              floor=0.0).numpy()
    scale, seconds = np.zeros((n, j)), np.zeros((n, j))
    for q in range(j):
        dist, idx = knn(whiten(descriptors[:, q].float()), k)
        w = neighbour_weights(dist, "median")[0].double().numpy()
        v = values.numpy().reshape(n, j, 2)[idx.numpy(), q]  # n x k x 2
        second = seconds[:, q] = (w * (v**2).sum(-1)).sum(1)
        scale[:, q] = np.sqrt(second / np.trace(cov.numpy()[:, 2 * q:2 * q + 2, 2 * q:2 * q + 2], axis1=1, axis2=2))
    s = np.repeat(scale, 2, axis=1)
    want = cov.numpy() * s[:, :, None] * s[:, None, :]
    assert np.allclose(got, want, rtol=1e-5)
    traces = np.stack([np.trace(got[:, 2 * q:2 * q + 2, 2 * q:2 * q + 2], axis1=1, axis2=2) for q in range(j)], 1)
    assert np.allclose(traces, seconds, rtol=1e-5)  # each joint's trace is its neighbours' second moment

    def correlation(c):
        d = np.sqrt(np.einsum("nii->ni", c))
        return c / d[:, :, None] / d[:, None, :]

    assert np.allclose(correlation(got), correlation(cov.numpy()), atol=1e-6)
