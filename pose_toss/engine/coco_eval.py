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

import numpy as np

AP_NAMES = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")


def keypoint_ap(ground_truth: dict, results: list[dict], sigmas) -> dict:
    """AP, AP50, AP75, AP(M), AP(L), AR, ... of ``results`` (COCO keypoint results: image_id, category_id,
    keypoints, score) against ``ground_truth``, by pycocotools with these OKS ``sigmas``. None where COCO
    leaves a number undefined (no person in an area range)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

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
