"""Predictions as COCO keypoint results with covariances."""

import numpy as np
import pytest

from pose_toss.coco_results import coco_results


def test_coco_results_map_back_to_image_pixels():
    a = np.array([[2.0, 0.0, -10.0], [0.0, 2.0, 4.0]])  # image -> crop: scale 2, shift
    mean = np.array([[10.0, 20.0, 30.0, 40.0]])
    cov = np.diag([4.0, 8.0, 12.0, 16.0])[None]
    (res,) = coco_results(mean, cov, a[None], [7], areas=[100.0], sigmas=[0.05, 0.1])
    assert res["image_id"] == 7 and res["category_id"] == 1
    # Third values: expected keypoint similarity det(I + S_j / c)^-1/2, c = area (2 sigma)^2, by hand:
    # joint 0: S = diag(1, 2), c = 1 -> 6^-1/2; joint 1: S = diag(3, 4), c = 4 -> 3.5^-1/2. Score: their mean.
    k0, k1 = 6**-0.5, 3.5**-0.5
    assert res["keypoints"] == pytest.approx([10.0, 8.0, k0, 20.0, 18.0, k1], abs=1e-4)
    assert np.asarray(res["covariance"]) == pytest.approx(np.diag([1.0, 2.0, 3.0, 4.0]))
    assert res["score"] == pytest.approx((k0 + k1) / 2, abs=1e-5)
