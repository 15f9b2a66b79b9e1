import math

import numpy as np
import pytest

from pose_toss.skeletons import LSP14
from pose_toss.viz.draw import chi2_2dof, contact_sheet, draw_pose, ellipse_axes


def test_chi2_quantile_matches_scipy():
    from scipy.stats import chi2

    for p in (0.5, 0.9, 0.95):
        assert chi2_2dof(p) == pytest.approx(chi2.ppf(p, 2))


@pytest.mark.parametrize("angle", [0.0, 30.0, 117.0])
def test_drawn_ellipse_matches_analytic_axes(angle):
    """On a blank canvas the drawn ellipse's extent along its axes equals the analytic half-axes (1 px)."""
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    cov2 = rot @ np.diag([30.0**2, 12.0**2]) @ rot.T / chi2_2dof(0.9)  # 0.9-ellipse half-axes 30 and 12
    cov = np.eye(28) * 1e-6
    cov[0:2, 0:2] = cov2
    joints = np.full((14, 2), -100.0)
    joints[0] = [100.0, 100.0]
    vis = np.zeros(14)
    vis[0] = 1
    img = draw_pose(np.zeros((200, 200, 3), np.uint8), joints, cov, LSP14, visibility=vis, levels=(0.9,), thickness=1)
    major, minor, ang = ellipse_axes(cov2, 0.9)
    assert major == pytest.approx(30.0) and minor == pytest.approx(12.0)
    ys, xs = np.nonzero(img.max(axis=2) > 100)
    d = np.stack([xs - 100.0, ys - 100.0], axis=1)
    far = np.hypot(*d.T) > 4  # leave out the joint's own dot
    along = d[far] @ rot
    assert abs(np.abs(along[:, 0]).max() - 30.0) <= 1.0
    assert abs(np.abs(along[:, 1]).max() - 12.0) <= 1.0


def test_invisible_joints_and_sheet():
    img = np.zeros((64, 64, 3), np.uint8)
    out = draw_pose(img, np.full((14, 2), 32.0), None, visibility=np.zeros(14))
    assert (out == 0).all() and (img == 0).all()  # nothing drawn, input untouched
    with pytest.raises(ValueError, match="expected 14 joints"):
        draw_pose(img, np.zeros((3, 2)))
    sheet = contact_sheet([img, img, img], cols=2, tile_size=32, pad=2)
    assert sheet.shape == (2 * 34 + 2, 2 * 34 + 2, 3)


# -- conditioning and correlations --------------------------------------------------------------------


def test_condition_matches_the_bivariate_closed_form_and_a_partitioned_solve():
    import torch

    from pose_toss import condition

    # Joint 0's x and joint 1's x correlated (rho), the y's independent: fixing joint 0 moves joint 1's
    # x by rho * s1 / s0 * (a - m0) and leaves it variance s1^2 (1 - rho^2).
    s0, s1, rho = 3.0, 5.0, 0.8
    cov = np.diag([s0**2, 4.0, s1**2, 9.0])
    cov[0, 2] = cov[2, 0] = rho * s0 * s1
    mean = np.array([10.0, 20.0, 30.0, 40.0])
    m, c = condition(mean, cov, {0: (13.0, 25.0)})
    assert isinstance(m, np.ndarray)
    np.testing.assert_allclose(m, [13.0, 25.0, 30.0 + rho * s1 / s0 * 3.0, 40.0])
    np.testing.assert_allclose(c[2, 2], s1**2 * (1 - rho**2))
    np.testing.assert_allclose(c[3, 3], 9.0)
    np.testing.assert_allclose(c[:2], 0.0, atol=1e-12)

    # Several joints fixed, a random full covariance: against the partitioned Gaussian formulas.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 10))
    cov = a @ a.T + np.eye(10)
    mean = rng.normal(size=10)
    obs = {1: (0.5, -0.2), 3: (1.0, 2.0)}
    b = np.array([2, 3, 6, 7])
    u = np.array([0, 1, 4, 5, 8, 9])
    vals = np.array([0.5, -0.2, 1.0, 2.0])
    gain = cov[np.ix_(u, b)] @ np.linalg.inv(cov[np.ix_(b, b)])
    m, c = condition(torch.tensor(mean), torch.tensor(cov), obs)
    assert torch.is_tensor(m)
    np.testing.assert_allclose(m.numpy()[u], mean[u] + gain @ (vals - mean[b]), rtol=1e-10)
    np.testing.assert_allclose(m.numpy()[b], vals)
    np.testing.assert_allclose(c.numpy()[np.ix_(u, u)], cov[np.ix_(u, u)] - gain @ cov[np.ix_(b, u)], rtol=1e-9)
    with pytest.raises(ValueError, match="observed joint 7 is out of range for 5 joints"):
        condition(mean, cov, {7: (0, 0)})


def test_joint_correlations_are_canonical_correlations():
    import torch
    from scipy.linalg import sqrtm

    from pose_toss.covariance import joint_correlations

    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    corr = joint_correlations(torch.tensor(cov)).numpy()
    for i in range(3):
        for j in range(3):
            sa = np.linalg.inv(sqrtm(cov[2 * i: 2 * i + 2, 2 * i: 2 * i + 2]).real)
            sb = np.linalg.inv(sqrtm(cov[2 * j: 2 * j + 2, 2 * j: 2 * j + 2]).real)
            expected = np.linalg.svd(sa @ cov[2 * i: 2 * i + 2, 2 * j: 2 * j + 2] @ sb, compute_uv=False)[0]
            assert corr[i, j] == pytest.approx(min(expected, 1.0), abs=1e-6)
    independent = joint_correlations(torch.eye(6)).numpy()
    np.testing.assert_allclose(independent, np.eye(3), atol=1e-7)


def _two_joint_pose(corr_xy: float):
    joints = np.full((14, 2), 50.0)
    joints[0], joints[5] = (40.0, 60.0), (160.0, 60.0)  # r_ankle and l_ankle, not joined by a limb
    cov = np.eye(28) * 4.0
    cov[0, 10] = cov[10, 0] = corr_xy * 4.0
    vis = np.zeros(14)
    vis[[0, 5]] = 1
    return joints, cov, vis


def test_correlation_links_appear_only_above_the_threshold():
    from pose_toss.viz import draw_correlation_links

    canvas = np.zeros((120, 200, 3), np.uint8)
    joints, cov, vis = _two_joint_pose(0.9)
    linked = draw_correlation_links(canvas, joints, cov, LSP14, threshold=0.5, visibility=vis)
    plain = draw_correlation_links(canvas, joints, cov, LSP14, threshold=0.95, visibility=vis)
    mid = (60, 100)  # halfway between the joints, far from both ellipses
    assert linked[mid][0] > 100 and linked[mid][2] > 100 and linked[mid][1] < 60  # magenta
    assert plain[mid].max() == 0


def test_conditional_drawing_moves_the_correlated_joint():
    from pose_toss import condition
    from pose_toss.viz import draw_conditional

    canvas = np.zeros((120, 200, 3), np.uint8)
    joints, cov, vis = _two_joint_pose(0.9)
    fixed = {0: (52.0, 60.0)}  # move r_ankle 12 px right: l_ankle follows by 0.9 * 12
    img = draw_conditional(canvas, joints.reshape(-1), cov, fixed, LSP14, visibility=vis)
    moved = condition(joints.reshape(-1), cov, fixed)[0].reshape(-1, 2)
    assert moved[5, 0] == pytest.approx(160.0 + 0.9 * 12.0)
    x, y = np.round(moved[5]).astype(int)
    assert img[y, x].min() > 200  # the conditional joint's white dot is drawn where it moved
    assert (img[60, 52] == [255, 0, 255]).all()  # the fixed joint's cross
