"""Person crop by affine warp, keypoint-aware augmentation, and the covariance under both.

Pixel convention: pixel (i, j) has its centre at integer coordinates (x=j, y=i), as in OpenCV and
albumentations. Under an affine map ``p -> A[:, :2] p + A[:, 2]`` each joint's coordinates move by
the same 2x2 linear part L, so the label covariance becomes ``(I_J (x) L) Sigma (I_J (x) L)^T``; a
horizontal flip also swaps left and right joints, which permutes the covariance's rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from pose_toss.skeletons import Skeleton

# Three points off which the applied affine map is read back: (0,0), (1,0), (0,1), scaled up for
# numerical precision. They ride along with the joints through albumentations.
_ANCHORS = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])


def crop_affine(center: np.ndarray, size: float, output_size: int) -> np.ndarray:
    """2x3 map from the square of side ``size`` px centred at ``center`` onto ``output_size`` px."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    k = output_size / float(size)
    c_out = (output_size - 1) / 2.0
    return np.array([[k, 0.0, c_out - k * center[0]], [0.0, k, c_out - k * center[1]]])


def box_to_center_size(bbox: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, float]:
    """Centre and square side from ``[x, y, w, h]``: the longer side times ``padding``."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x + (w - 1) / 2.0, y + (h - 1) / 2.0]), max(w, h) * padding


def center_scale_to_size(center: np.ndarray, scale: float, padding: float = 1.25) -> tuple[np.ndarray, float]:
    """MPII convention: ``scale * 200`` px is the person's height."""
    return np.asarray(center, dtype=np.float64), float(scale) * 200.0 * padding


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 map ``outer o inner``."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def invert_affine(a: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(a[:, :2])
    return np.concatenate([inv, -inv @ a[:, 2:]], axis=1)


def affine_points(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a[:, :2].T + a[:, 2]


def affine_covariance(a: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``(I (x) L) cov (I (x) L)^T`` for a (..., 2J, 2J) covariance and the linear part L of ``a``."""
    lin = np.asarray(a)[:2, :2]
    j = cov.shape[-1] // 2
    blocks = cov.reshape(*cov.shape[:-2], j, 2, j, 2)
    out = np.einsum("ab,...ibjc,dc->...iajd", lin, blocks, lin)
    return out.reshape(cov.shape)


def permute_covariance(cov: np.ndarray, coord_perm: np.ndarray) -> np.ndarray:
    return cov[..., coord_perm, :][..., :, coord_perm]


def affine_from_anchors(moved: np.ndarray) -> np.ndarray:
    """Solve the 2x3 map that took ``_ANCHORS`` to ``moved``."""
    origin = moved[0]
    lin = np.stack([moved[1] - origin, moved[2] - origin], axis=1) / 100.0
    return np.concatenate([lin, origin[:, None]], axis=1)


@dataclass
class CropResult:
    image: np.ndarray  # input_size x input_size x 3 uint8
    joints: np.ndarray  # J x 2, input pixels
    visibility: np.ndarray  # J
    cov: np.ndarray | None  # 2J x 2J, input pixels^2
    affine: np.ndarray  # 2x3, original image -> input crop
    flipped: bool
    occluded: np.ndarray | None = None  # J: 1 hidden, 0 seen, -1 unknown or outside the crop (when flags were given)


class TopDownTransform:
    """Crop a person to the network input and (optionally) augment, carrying the covariance along.

    Geometric augmentation (rotation, scale, flip) and photometric augmentation (colour jitter, blur)
    are albumentations transforms; the exact affine map they applied is read back from three anchor
    keypoints, so the covariance follows whatever albumentations did to the joints.
    """

    def __init__(self, input_size: int, skeleton: Skeleton, *, augment: bool = False, rotation: float = 30.0,
                 scale: tuple[float, float] = (0.8, 1.2), flip_prob: float = 0.5, color_jitter_prob: float = 0.5,
                 blur_prob: float = 0.1) -> None:
        self.input_size = int(input_size)
        self.skeleton = skeleton
        self.augment = augment
        self._flip_joint = skeleton.flip_index
        self._flip_coord = skeleton.flip_coordinate_index
        self.pipeline = None
        if augment:
            self.pipeline = A.Compose(
                [
                    A.Affine(scale=tuple(scale), keep_ratio=True, rotate=(-rotation, rotation),
                             border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
                    A.HorizontalFlip(p=flip_prob),
                    A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=color_jitter_prob),
                    A.GaussianBlur(blur_limit=(3, 5), p=blur_prob),
                ],
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                seed=0,
            )

    @classmethod
    def from_config(cls, data_cfg, skeleton: Skeleton, train: bool) -> TopDownTransform:
        aug = data_cfg.augment
        return cls(data_cfg.input_size, skeleton, augment=train and aug.enabled, rotation=aug.rotation,
                   scale=aug.scale, flip_prob=aug.flip_prob, color_jitter_prob=aug.color_jitter_prob,
                   blur_prob=aug.blur_prob)

    def __call__(self, image: np.ndarray, joints: np.ndarray, visibility: np.ndarray, center: np.ndarray,
                 size: float, cov: np.ndarray | None = None, seed: int | None = None,
                 occluded: np.ndarray | None = None) -> CropResult:
        """``occluded``: each joint's occlusion flag (1 hidden, 0 seen, NaN unknown), carried like the visibility:
        swapped with the joints on a flip, unknown (-1) where the joint leaves the crop."""
        s = self.input_size
        crop = crop_affine(center, size, s)
        img = cv2.warpAffine(image, crop, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        pts = affine_points(crop, np.asarray(joints, dtype=np.float64))
        total = crop
        flipped = False
        if self.pipeline is not None:
            if seed is not None:
                self.pipeline.set_random_seed(seed)
            out = self.pipeline(image=img, keypoints=np.concatenate([pts, _ANCHORS]))
            img = out["image"]
            moved = np.asarray(out["keypoints"], dtype=np.float64)
            aug = affine_from_anchors(moved[len(pts):])
            pts = moved[: len(pts)]
            total = compose_affine(aug, crop)
            flipped = bool(np.linalg.det(aug[:, :2]) < 0)
        vis = np.asarray(visibility, dtype=np.float32).copy()
        flags = None if occluded is None else np.asarray(occluded, dtype=np.float64).reshape(-1)
        cov_out = affine_covariance(total, cov) if cov is not None else None
        if flipped:  # mirrored image: the joint on the person's right is now drawn where the left was
            pts, vis = pts[self._flip_joint], vis[self._flip_joint]
            flags = None if flags is None else flags[self._flip_joint]
            if cov_out is not None:
                cov_out = permute_covariance(cov_out, self._flip_coord)
        inside = np.isfinite(pts).all(axis=1) & (pts >= 0).all(axis=1) & (pts <= s - 1).all(axis=1)
        vis = vis * inside
        if flags is not None:
            flags = np.where(inside & np.isfinite(flags), flags > 0, -1.0).astype(np.float32)
        return CropResult(img, pts, vis, cov_out, total, flipped, flags)
