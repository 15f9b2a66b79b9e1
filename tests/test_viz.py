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
