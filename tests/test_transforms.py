import numpy as np
import pytest
import torch

from pose_toss.covariance import unmirror
from pose_toss.data.synthetic import SyntheticPoseDataset
from pose_toss.data.transforms import (
    TopDownTransform,
    affine_covariance,
    affine_points,
    box_to_center_size,
    compose_affine,
    crop_affine,
    invert_affine,
)
from pose_toss.skeletons import LSP14


def test_crop_affine_maps_box_onto_input():
    a = crop_affine(np.array([50.0, 80.0]), 40.0, 64)
    assert np.allclose(affine_points(a, np.array([[50.0, 80.0]])), [[31.5, 31.5]])
    # the square's left edge (x = 30) lands on the crop's left edge (x = -0.5 in pixel-centre coordinates)
    assert np.allclose(affine_points(a, np.array([[30.0, 80.0]]))[0, 0], -0.5)
    assert np.allclose(a[:, :2], np.eye(2) * 64 / 40)
    inv = invert_affine(a)
    p = np.random.default_rng(0).uniform(0, 100, (5, 2))
    assert np.allclose(affine_points(inv, affine_points(a, p)), p)
    assert np.allclose(compose_affine(inv, a), np.hstack([np.eye(2), np.zeros((2, 1))]))


def test_box_to_center_size():
    c, s = box_to_center_size(np.array([10, 20, 31, 61]), padding=1.25)
    assert np.allclose(c, [25.0, 50.0]) and s == pytest.approx(61 * 1.25)


def test_affine_covariance_matches_kronecker():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(28, 28))
    cov = m @ m.T
    a = np.hstack([rng.normal(size=(2, 2)), rng.normal(size=(2, 1))])
    big = np.kron(np.eye(14), a[:, :2])
    assert np.allclose(affine_covariance(a, cov), big @ cov @ big.T)


def _cued_record(seed=0):
    ds = SyntheticPoseDataset(300, 128, seed=seed)
    for i in range(300):
        ann = ds.annotation(i)
        if len(ann["cues"]) == 2 and ann["visibility"].all():
            return ann
    raise AssertionError("no sample with two cues")


@pytest.mark.parametrize("want_flip", [False, True])
def test_covariance_follows_augmentation(want_flip):
    """Push label-noise samples through the real pipeline; their spread must match the reported covariance."""
    rec = _cued_record()
    tf = TopDownTransform(64, LSP14, augment=True, rotation=40, scale=(0.7, 1.3), flip_prob=0.5,
                          color_jitter_prob=0.0, blur_prob=0.0)
    image = np.zeros((128, 128, 3), np.uint8)
    center, size = box_to_center_size(rec["bbox"], 1.25)
    seed = next(s for s in range(100)
                if tf(image, rec["joints_true"], rec["visibility"], center, size, seed=s).flipped == want_flip)
    ref = tf(image, rec["joints_true"], rec["visibility"], center, size, cov=rec["cov_true"], seed=seed)
    rng = np.random.default_rng(0)
    noise = rng.multivariate_normal(np.zeros(28), rec["cov_true"], size=1500)
    moved = np.array([
        tf(image, rec["joints_true"] + n.reshape(14, 2), rec["visibility"], center, size, seed=seed).joints.reshape(-1)
        for n in noise
    ])
    # Whitened by the reported covariance, the moved noise must be N(0, I): entries of a 1500-sample covariance
    # of white noise scatter by about 1 / sqrt(1500) = 0.026 off the diagonal and 0.037 on it.
    def whitened_cov(cov):
        return np.cov(np.linalg.solve(np.linalg.cholesky(cov), (moved - ref.joints.reshape(-1)).T), rowvar=True)

    emp = whitened_cov(ref.cov)
    assert np.abs(np.diag(emp) - 1).max() < 0.15 and np.abs(emp - np.diag(np.diag(emp))).max() < 0.15
    # a covariance that ignored the flip permutation or the scale would be far off
    wrong = whitened_cov(affine_covariance(ref.affine, rec["cov_true"]) if want_flip else rec["cov_true"])
    assert np.abs(wrong - np.eye(28)).max() > 0.5


def test_flip_swaps_left_and_right_where_the_pixels_go():
    """A dot drawn at the right ankle ends up under the output's *left* ankle after a mirror."""
    tf = TopDownTransform(96, LSP14, augment=True, rotation=25, scale=(0.9, 1.1), flip_prob=1.0,
                          color_jitter_prob=0.0, blur_prob=0.0)
    rng = np.random.default_rng(5)
    joints = rng.uniform(30, 70, (14, 2))
    image = np.zeros((100, 100, 3), np.uint8)
    x, y = np.round(joints[LSP14.index("r_ankle")]).astype(int)
    joints[LSP14.index("r_ankle")] = [x, y]
    image[y - 1:y + 2, x - 1:x + 2] = 255
    out = tf(image, joints, np.ones(14), np.array([49.5, 49.5]), 100.0, seed=3)
    assert out.flipped
    peak = np.unravel_index(out.image[..., 0].astype(float).argmax(), out.image.shape[:2])
    assert np.hypot(*(out.joints[LSP14.index("l_ankle")] - peak[::-1])) <= 1.0


def test_no_augmentation_is_the_plain_crop():
    rec = _cued_record(1)
    tf = TopDownTransform(64, LSP14, augment=False)
    center, size = box_to_center_size(rec["bbox"], 1.25)
    out = tf(np.zeros((128, 128, 3), np.uint8), rec["joints"], rec["visibility"], center, size, cov=rec["cov_true"])
    a = crop_affine(center, size, 64)
    assert np.allclose(out.affine, a) and not out.flipped
    assert np.allclose(out.joints, affine_points(a, rec["joints"]))
    assert np.allclose(out.cov, rec["cov_true"] * (64 / size) ** 2)


def test_joints_leaving_the_crop_are_masked():
    tf = TopDownTransform(64, LSP14)
    joints = np.full((14, 2), 50.0)
    joints[0] = [500.0, 50.0]
    out = tf(np.zeros((100, 100, 3), np.uint8), joints, np.ones(14), np.array([50.0, 50.0]), 80.0)
    assert out.visibility[0] == 0 and out.visibility[1:].all()


def test_unmirror_undoes_the_pipelines_horizontal_flip():
    # The flip test maps predictions on mirrored crops back with covariance.unmirror; it must agree with
    # the training pipeline's flip (albumentations, then the left/right swap).
    rng = np.random.default_rng(0)
    joints = rng.uniform(20, 100, (14, 2))
    image = np.zeros((120, 120, 3), np.uint8)
    plain = TopDownTransform(64, LSP14, augment=False)
    mirror = TopDownTransform(64, LSP14, augment=True, rotation=0.0, scale=(1.0, 1.0), flip_prob=1.0,
                              color_jitter_prob=0.0, blur_prob=0.0)
    a = plain(image, joints, np.ones(14), np.array([60.0, 60.0]), 120.0)
    b = mirror(image, joints, np.ones(14), np.array([60.0, 60.0]), 120.0, seed=1)
    assert b.flipped
    cov = torch.eye(28, dtype=torch.float64).expand(1, 28, 28)
    back, _ = unmirror(torch.from_numpy(b.joints.reshape(1, -1)), cov,
                       torch.from_numpy(LSP14.flip_coordinate_index.copy()), 64)
    np.testing.assert_allclose(back.numpy().reshape(14, 2), a.joints, atol=1e-6)
