"""COCO keypoint AP through pycocotools: hand-made cases with known AP, and the real COCO file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pose_toss.data.coco_format import coco_ground_truth, record_area
from pose_toss.engine.coco_eval import keypoint_ap
from pose_toss.skeletons import Skeleton

pytest.importorskip("pycocotools")

PAIR = Skeleton(name="pair", joint_names=("a", "b"), flip_pairs=(), limbs=((0, 1),))
SIGMAS = [0.05, 0.1]


def _people():
    return [{"image_id": 1, "joints": np.array([[10.0, 10.0], [60.0, 80.0]]), "visibility": np.ones(2),
             "bbox": np.array([0.0, 0.0, 100.0, 100.0])},
            {"image_id": 2, "joints": np.array([[30.0, 20.0], [70.0, 90.0]]), "visibility": np.ones(2),
             "bbox": np.array([5.0, 5.0, 100.0, 100.0])}]


def _result(image_id, joints, score):
    kps = np.concatenate([joints, np.ones((len(joints), 1))], axis=1).reshape(-1)
    return {"image_id": image_id, "category_id": 1, "keypoints": kps.tolist(), "score": score}


def test_perfect_predictions_give_ap_one():
    people = _people()
    gt = coco_ground_truth(people, PAIR)
    ap = keypoint_ap(gt, [_result(p["image_id"], p["joints"], 0.9) for p in people], SIGMAS)
    assert ap["AP"] == pytest.approx(1.0) and ap["AR"] == pytest.approx(1.0) and ap["AP_L"] == pytest.approx(1.0)
    assert ap["AP_M"] is None  # no person of medium area: COCO leaves it undefined


def test_a_shifted_joint_lowers_oks_and_ap_by_the_closed_form():
    """Person 2's joint b moved by d: its OKS is (1 + exp(-d^2 / (2 s^2 (2 sigma_b)^2))) / 2 = 0.81, so it
    matches at thresholds 0.50 ... 0.80 and not at 0.85, 0.90, 0.95. Ranked below the perfect person 1,
    COCO's 101-point AP is 1 at the first seven thresholds and 51/101 at the last three."""
    import torch

    from pose_toss.metrics import keypoint_similarity

    people = _people()
    area = record_area(people[1])
    c = area * (2 * SIGMAS[1]) ** 2
    d = math.sqrt(-2 * c * math.log(2 * 0.81 - 1))
    moved = people[1]["joints"].copy()
    moved[1, 0] += d
    ks = keypoint_similarity(torch.tensor(moved.reshape(1, -1)), torch.tensor(people[1]["joints"].reshape(1, -1)),
                             torch.tensor([area]), torch.tensor(SIGMAS))
    assert float(ks.mean()) == pytest.approx(0.81)
    results = [_result(1, people[0]["joints"], 0.9), _result(2, moved, 0.5)]
    ap = keypoint_ap(coco_ground_truth(people, PAIR), results, SIGMAS)
    assert ap["AP"] == pytest.approx((7 + 3 * 51 / 101) / 10, abs=1e-9)
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(1.0)
    assert ap["AR"] == pytest.approx((7 * 1.0 + 3 * 0.5) / 10)
    # Ranked first instead, the worse person makes the strict thresholds' precision 0 at recall 0.5.
    results = [_result(1, people[0]["joints"], 0.5), _result(2, moved, 0.9)]
    ap = keypoint_ap(coco_ground_truth(people, PAIR), results, SIGMAS)
    assert ap["AP"] < (7 + 3 * 51 / 101) / 10


def test_real_coco_file_ground_truth_matches_the_files_own(shared_data):
    """Our ground truth written from read_coco's records scores predictions exactly as the annotation
    file itself does."""
    from pose_toss.data.readers import read_coco
    from pose_toss.skeletons import COCO17

    path = shared_data / "coco" / "test_coco.json"
    records = read_coco(path, shared_data / "coco")
    rng = np.random.default_rng(0)
    results = []
    for r in records:
        joints = np.where(np.asarray(r["visibility"])[:, None] > 0, r["joints"], 0.0)
        noisy = joints + rng.normal(0, 3.0, joints.shape)
        results.append(_result(r["image_id"], noisy, float(rng.uniform())))
    ours = keypoint_ap(coco_ground_truth(records, COCO17), results, COCO17.oks_sigmas)
    theirs = keypoint_ap(json.loads(path.read_text()), results, COCO17.oks_sigmas)
    assert ours == theirs
    assert 0 < ours["AP"] < 1
    perfect = [_result(r["image_id"], np.asarray(r["joints"]), 1.0) for r in records]
    assert keypoint_ap(coco_ground_truth(records, COCO17), perfect, COCO17.oks_sigmas)["AP"] == pytest.approx(1.0)


def test_ap_by_score_ranks_the_same_predictions_three_ways():
    from pose_toss.engine.coco_eval import ap_by_score

    people = _people()
    moved = people[1]["joints"] + np.array([[0.0, 0.0], [25.0, 0.0]])  # person 2 worse
    results = [_result(1, people[0]["joints"], 0.9), _result(2, moved, 0.2)]  # expected OKS ranks 1 first
    gt = coco_ground_truth(people, PAIR)
    heat = np.array([[0.1, 0.1], [0.9, 0.9]])  # the heatmaps rank person 2 first
    by = ap_by_score(gt, results, heat, SIGMAS)
    assert by["expected_oks"]["AP"] > by["heatmap_max"]["AP"]
    assert set(by) == {"expected_oks", "heatmap_max", "constant"}
    assert set(ap_by_score(gt, results, None, SIGMAS)) == {"expected_oks", "constant"}


def test_simulated_detections_jitter_boxes_and_add_false_positives():
    from pose_toss.engine.coco_eval import simulated_detections

    people = [{**p, "image": np.zeros((200, 200, 3), np.uint8)} for p in _people() * 200]
    same = simulated_detections(people, jitter=0.0, false_positives=0.0)
    assert len(same) == len(people)
    assert all(np.allclose(a["bbox"], b["bbox"]) for a, b in zip(same, people, strict=True))
    dets = simulated_detections(people, jitter=0.1, false_positives=0.25, seed=3)
    fps = [d for d in dets if d["false_positive"]]
    assert abs(len(fps) / len(people) - 0.25) < 0.05  # 400 people: within about 2.5 standard deviations
    assert all(not np.asarray(d["visibility"]).any() for d in fps)
    true = [d for d in dets if not d["false_positive"]]
    shift = np.array([d["bbox"][0] + d["bbox"][2] / 2 - (p["bbox"][0] + p["bbox"][2] / 2)
                      for d, p in zip(true, people, strict=True)])
    assert 0.07 * 100 < shift.std() < 0.13 * 100  # N(0, 0.1 x the box size)


def test_reliability_bins_by_hand():
    import torch

    from pose_toss.metrics import reliability

    predicted = torch.tensor([0.05, 0.08, 0.55, 0.95, 0.99])
    observed = torch.tensor([0.0, 0.1, 0.5, 1.0, 0.8])
    r = reliability(predicted, observed, bins=10)
    assert r["count"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert r["predicted"][0] == pytest.approx(0.065) and r["observed"][0] == pytest.approx(0.05)
    assert math.isnan(r["predicted"][1])
    expected = (2 * abs(0.05 - 0.065) + abs(0.5 - 0.55) + 2 * abs(0.9 - 0.97)) / 5
    assert r["ece"] == pytest.approx(expected)
