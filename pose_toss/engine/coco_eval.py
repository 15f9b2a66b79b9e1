"""COCO keypoint evaluation (pycocotools' COCOeval, ``iouType="keypoints"``) of any evaluated records.

The ground truth is written from the records themselves (``data.coco_format.coco_ground_truth``: joints
in image pixels, visibility, person box, area), so the synthetic data, MPII / LSP and COCO are all scored
the same way, with the skeleton's OKS constants (``Skeleton.oks_sigmas``: COCO's published ones, and
stated choices for joints COCO lacks).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose_toss.coco_results import read_coco_results
from pose_toss.data.coco_format import record_image_size
from pose_toss.data.readers import AnnotationError, keypoint_category, read_annotation_json
from pose_toss.skeletons import SKELETONS, skeleton_from_coco_category

AP_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")


def keypoint_ap(ground_truth: dict, results: list[dict], sigmas) -> dict:
    """AP, AP50, AP75, AP(M), AP(L), AR, ... of ``results`` (COCO keypoint results: image_id, category_id,
    keypoints, score) against ``ground_truth``, by pycocotools with these OKS ``sigmas``. None where COCO
    leaves a number undefined (no person in an area range)."""

    sigmas = np.asarray(sigmas, dtype=np.float64)
    cats = ground_truth["categories"]
    if cats and len(cats[0].get("keypoints", sigmas)) != len(sigmas):
        raise ValueError(f"{len(sigmas)} OKS sigmas for {len(cats[0]['keypoints'])} keypoints")
    if not results:
        return dict.fromkeys(AP_NAMES, 0.0)
    keep = ("image_id", "category_id", "keypoints", "score")
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # pycocotools prints as it goes
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        dt = gt.loadRes([{k: r[k] for k in keep} for r in results])
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(AP_NAMES, ev.stats, strict=True)}


def keypoint_ap_against_file(results, ground_truth_file, sigmas=None) -> dict:
    """COCO keypoint AP of ``results`` (a list, or a results JSON file as ``eval`` and ``predict`` write) against an
    original COCO keypoints file, by plain pycocotools (``COCO.loadRes``, ``COCOeval``) with that file's OKS
    constants (its skeleton's; ``sigmas`` to override). Results of another joint set than the file's keypoint
    category are refused, naming both: an LSP-14 or MPII-16 model's results cannot be scored against COCO's 17."""
    gt_path = Path(ground_truth_file)
    ground_truth = read_annotation_json(gt_path)
    if not isinstance(ground_truth, dict) or not {"images", "annotations", "categories"} <= set(ground_truth):
        raise AnnotationError(f"{gt_path}: expected a COCO keypoints file (images, annotations, categories)")
    if not isinstance(results, list):
        results = read_coco_results(results)
    category = keypoint_category(gt_path, ground_truth)
    skeleton = skeleton_from_coco_category(category, f"{gt_path}: category {category.get('name')!r}")
    for r in results:
        count = len(r.get("keypoints", ())) // 3
        named = r.get("skeleton")
        other_builtin = named in SKELETONS and skeleton.name in SKELETONS and SKELETONS[named] != skeleton
        if count != skeleton.num_joints or other_builtin:
            raise ValueError(f"results of image {r.get('image_id')} are for skeleton {named or '?'} ({count} "
                             f"keypoints), but {gt_path}'s category {category.get('name')!r} has "
                             f"{skeleton.num_joints} keypoints ({skeleton.name}): score results against a ground "
                             "truth of the same keypoint set")
        if r.get("category_id") != category["id"]:
            raise ValueError(f"results of image {r.get('image_id')} have category_id {r.get('category_id')}; "
                             f"{gt_path}'s keypoint category {category.get('name')!r} is {category['id']}")
    return keypoint_ap(ground_truth, results, skeleton.oks_sigmas if sigmas is None else sigmas)


SCORES = ("expected_oks", "heatmap_max", "constant")


def rescored(results: list[dict], scores) -> list[dict]:
    """``results`` with each person's ``score`` replaced (same order)."""
    return [{**r, "score": float(sc)} for r, sc in zip(results, scores, strict=True)]


def ap_by_score(ground_truth: dict, results: list[dict], heatmap_max, sigmas) -> dict:
    """COCO AP of the same predictions ranked three ways: by expected OKS (the results' own scores), by the
    mean over joints of the heatmaps' maximum probability (``heatmap_max``, N x J, or None for a model
    without heatmaps), and by a constant (every person alike: COCO then ranks them by input order)."""
    out = {"expected_oks": keypoint_ap(ground_truth, results, sigmas)}
    if heatmap_max is not None:
        out["heatmap_max"] = keypoint_ap(ground_truth, rescored(results, np.asarray(heatmap_max).mean(1)), sigmas)
    out["constant"] = keypoint_ap(ground_truth, rescored(results, np.ones(len(results))), sigmas)
    return out


def simulated_detections(records: list[dict], jitter: float = 0.1, false_positives: float = 0.25,
                         seed: int = 0) -> list[dict]:
    """Person boxes as a detector gives them: every true box moved by N(0, jitter x its size) on each axis
    and scaled by exp(N(0, jitter)), and for a ``false_positives`` share of the people one extra box of
    the same size somewhere else in the image (a record with no visible joint, flagged
    ``false_positive``). Records keep every other key, so they load like the originals."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        x, y, w, h = np.asarray(r["bbox"], dtype=np.float64)
        size = max(w, h)
        dx, dy = rng.normal(0.0, jitter * size, 2)
        sx, sy = np.exp(rng.normal(0.0, jitter, 2))
        nw, nh = w * sx, h * sy
        box = np.array([x + w / 2 + dx - nw / 2, y + h / 2 + dy - nh / 2, nw, nh])
        out.append({**r, "bbox": box, "false_positive": False})
        if rng.random() < false_positives:
            iw, ih = record_image_size(r) or (x + 2 * w, y + 2 * h)
            fx, fy = rng.uniform(0, max(iw - w, 1.0)), rng.uniform(0, max(ih - h, 1.0))
            out.append({**r, "bbox": np.array([fx, fy, w, h]), "visibility": np.zeros_like(r["visibility"]),
                        "false_positive": True})
    return out
