"""Predictions as COCO keypoint results with a per-person covariance, in original-image pixels."""

from __future__ import annotations

import json

import numpy as np
import torch

from pose_toss.data.readers import read_json_file
from pose_toss.data.transforms import affine_covariance, affine_points, invert_affine
from pose_toss.metrics import expected_keypoint_similarity
from pose_toss.outputs import atomic_write_text
from pose_toss.skeletons import get_skeleton


def coco_results(means: np.ndarray, covs: np.ndarray, affines: np.ndarray, image_ids, category_id: int = 1,
                 areas=None, sigmas=None, skeleton: str | None = None) -> list[dict]:
    """One COCO result per person: ``image_id``, ``category_id``, ``keypoints`` ([x, y, c] per joint, in the
    skeleton's joint order), ``score``, plus ``covariance`` (2J x 2J, [x0, y0, x1, y1, ...], pixels^2 of
    the original image); see ``coco_result`` for c and the score. ``means`` / ``covs`` are in crop pixels
    with ``affines`` the original-image -> crop maps; they are mapped back through the inverse affine.
    ``areas``: each person's area (for OKS; default: the predicted joints' box). ``skeleton``: the joint set's
    name, written into each result."""
    results = []
    areas = [None] * len(means) if areas is None else areas
    for mean, cov, a, image_id, area in zip(means, covs, affines, image_ids, areas, strict=True):
        inv = invert_affine(np.asarray(a, dtype=np.float64))
        joints = affine_points(inv, np.asarray(mean, dtype=np.float64).reshape(-1, 2))
        results.append(coco_result(joints, affine_covariance(inv, np.asarray(cov, dtype=np.float64)), image_id,
                                   category_id, area, sigmas, skeleton))
    return results


def coco_result(joints: np.ndarray, cov: np.ndarray, image_id, category_id: int = 1, area: float | None = None,
                sigmas=None, skeleton: str | None = None) -> dict:
    """One person's COCO result from joints (J x 2) and covariance (2J x 2J), both in image pixels.

    Each keypoint's third value is its expected keypoint similarity E[ks_j] (``metrics.
    expected_keypoint_similarity``: the OKS term to expect when the truth follows the predicted
    Gaussian), so a threshold on it reads "how right this joint should be"; ``score`` is their mean, the
    person's expected OKS, which ranks people for COCO AP. ``area`` (OKS's s^2; default: the joints' box
    area) and ``sigmas`` (default: the skeleton's for 14, 16 or 17 joints) set the scale."""


    cov = 0.5 * (cov + cov.T)
    area = _person_size(joints) ** 2 if area is None else float(area)
    eks = keypoint_scores(cov, area, sigmas)
    return coco_entry(joints, cov, eks, image_id, float(eks.mean()), area, category_id, skeleton)


def coco_entry(joints: np.ndarray, cov: np.ndarray, scores: np.ndarray, image_id, score: float, area: float,
               category_id: int = 1, skeleton: str | None = None) -> dict:
    """A COCO keypoint result as written to ``predictions.json``: joints (J x 2) with their ``scores`` (J) as
    ``keypoints`` [x, y, c, ...], the person's ``score``, ``area`` (OKS's s^2 the scores used; COCOeval
    recomputes its own) and the ``covariance``, rounded as every pose-toss output rounds them; ``skeleton``: the
    name of the joint set the keypoints follow (pycocotools ignores it; ``keypoint_ap_against_file`` checks it)."""
    kps = np.concatenate([np.asarray(joints), np.asarray(scores)[:, None]], axis=1).reshape(-1)
    extra = {} if skeleton is None else {"skeleton": skeleton}
    return {
        "image_id": image_id.item() if hasattr(image_id, "item") else image_id,
        "category_id": category_id,
        "keypoints": [round(float(v), 4) for v in kps],
        "score": round(float(score), 5),
        "area": round(float(area), 3),
        "covariance": [[round(float(v), 4) for v in row] for row in cov],
        **extra,
    }


def keypoint_scores(cov: np.ndarray, area: float, sigmas=None) -> np.ndarray:
    """Each joint's expected keypoint similarity under a person's covariance (2J x 2J, image pixels²) at OKS scale
    ``area`` (s²): the keypoint scores of ``coco_result``, unrounded. ``sigmas``: default the skeleton's."""
    cov = np.asarray(cov, dtype=np.float64)
    sigmas = default_sigmas(len(cov) // 2) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    return expected_keypoint_similarity(torch.from_numpy(0.5 * (cov + cov.T))[None],
                                        torch.tensor([float(area)], dtype=torch.float64),
                                        torch.from_numpy(sigmas))[0].numpy()


def default_sigmas(num_joints: int) -> np.ndarray:

    by_count = {14: "lsp14", 16: "mpii16", 17: "coco17"}
    if num_joints not in by_count:
        raise ValueError(f"no default OKS sigmas for {num_joints} joints; pass sigmas")
    return get_skeleton(by_count[num_joints]).oks_sigmas


def _person_size(joints: np.ndarray) -> float:
    """sqrt of the joints' bounding-box area (the scale COCO's OKS uses), at least 1 px."""
    span = joints.max(axis=0) - joints.min(axis=0)
    return float(max(np.sqrt(span[0] * span[1]), 1.0))


def read_coco_results(path) -> list[dict]:
    """A COCO keypoint results file: a JSON list of results. A missing or unreadable file, or one holding
    anything but a list, is an error naming it."""
    results = read_json_file(path, "COCO keypoint results file")
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a list of COCO keypoint results, got {type(results).__name__}")
    return results


def write_coco_results(path, results: list[dict]) -> None:

    atomic_write_text(path, json.dumps(results))
