"""Predictions as COCO keypoint results with a per-person covariance, in original-image pixels."""

from __future__ import annotations

import json

import numpy as np

from pose_toss.data.transforms import affine_covariance, affine_points, invert_affine


def detection_score(cov: np.ndarray, box_size: float, radius: float = 0.1) -> float:
    """The expected fraction of joints within ``radius x box_size`` of the prediction, reading each
    joint as an isotropic Gaussian with its own variance (trace / 2): ``1 - exp(-r^2 / (2 v))``."""
    d = cov.shape[-1]
    var = np.diagonal(cov).reshape(d // 2, 2).sum(-1) / 2
    r2 = (radius * box_size) ** 2
    return float(np.mean(1.0 - np.exp(-r2 / (2 * np.maximum(var, 1e-12)))))


def coco_results(means: np.ndarray, covs: np.ndarray, affines: np.ndarray, image_ids, category_id: int = 1,
                 ) -> list[dict]:
    """One COCO result per person: ``image_id``, ``category_id``, ``keypoints`` ([x, y, 2] per joint, in
    the skeleton's joint order), ``score`` (``detection_score`` at 10% of the person's size), plus
    ``covariance`` (2J x 2J, [x0, y0, x1, y1, ...], pixels^2 of the original image).
    ``means`` / ``covs`` are in crop pixels with ``affines`` the original-image -> crop maps; they are
    mapped back through the inverse affine."""
    results = []
    for mean, cov, a, image_id in zip(means, covs, affines, image_ids, strict=True):
        inv = invert_affine(np.asarray(a, dtype=np.float64))
        joints = affine_points(inv, np.asarray(mean, dtype=np.float64).reshape(-1, 2))
        results.append(coco_result(joints, affine_covariance(inv, np.asarray(cov, dtype=np.float64)), image_id,
                                   category_id))
    return results


def coco_result(joints: np.ndarray, cov: np.ndarray, image_id, category_id: int = 1) -> dict:
    """One person's COCO result from joints (J x 2) and covariance (2J x 2J), both in image pixels."""
    cov = 0.5 * (cov + cov.T)
    kps = np.concatenate([joints, np.full((len(joints), 1), 2.0)], axis=1).reshape(-1)
    return {
        "image_id": image_id.item() if hasattr(image_id, "item") else image_id,
        "category_id": category_id,
        "keypoints": [round(float(v), 3) for v in kps],
        "score": round(detection_score(cov, _person_size(joints)), 5),
        "covariance": [[round(float(v), 4) for v in row] for row in cov],
    }


def _person_size(joints: np.ndarray) -> float:
    """sqrt of the joints' bounding-box area (the scale COCO's OKS uses), at least 1 px."""
    span = joints.max(axis=0) - joints.min(axis=0)
    return float(max(np.sqrt(span[0] * span[1]), 1.0))


def write_coco_results(path, results: list[dict]) -> None:
    from pose_toss.io import atomic_write_text

    atomic_write_text(path, json.dumps(results))
