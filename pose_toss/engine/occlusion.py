"""An intervention check on synthetic data: does the covariance grow where an occluder hides a limb?

Each pair is one test figure rendered twice, the same pose, scene and sensor noise, once without and once
with an occluder on one limb (``SyntheticPoseDataset.with_cues``). Both are predicted, and at the limb's
distal joint we compare the predicted spread sqrt(tr S_bb), the error of the mean, and the coverage of the
90 % ellipse: the share of labels, drawn from the generator's noise model for that condition, that fall
inside it. A covariance that sees the occluder widens where the labels and its own error do.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from pose_toss.data.dataset import PoseDataset
from pose_toss.data.loading import make_loader
from pose_toss.data.synthetic import CUE_LIMBS, Cue, SyntheticPoseDataset
from pose_toss.engine.prediction import predict_dataset
from pose_toss.engine.runtime import Runtime
from pose_toss.metrics import calibrated_covariance, joint_blocks

CHI2_2D_90 = -2.0 * math.log(0.1)  # squared Mahalanobis radius of the 90 % ellipse in two dimensions


# The range the added occluder's severity is drawn from, uniformly.
OCCLUDER_SEVERITY = (0.35, 1.0)


def occlusion_pairs(generator: SyntheticPoseDataset, pairs: int, seed: int = 0,
                    severity: tuple[float, float] = OCCLUDER_SEVERITY) -> tuple[list[dict], list[int]]:
    """``2 * pairs`` records, (plain, occluded) in turn, and each pair's occluded (distal) joint.

    Figure i keeps its own cues except any on the chosen limb; the limb is drawn among the cue limbs
    whose joints are both in the image and that carry no cue, the severity uniformly from ``severity``."""
    rng = np.random.default_rng([seed, 4242])
    records, joints = [], []
    for i in range(len(generator)):
        if len(joints) == pairs:
            break
        own = generator.annotation(i)
        cued = {tuple(c.limb) for c in own["cues"]}
        limbs = [limb for limb in CUE_LIMBS if limb not in cued and own["visibility"][list(limb)].all()]
        if not limbs:
            continue
        limb = limbs[int(rng.integers(len(limbs)))]
        others = [c for c in own["cues"] if tuple(c.limb) != limb]
        occluder = Cue("occluder", limb, float(rng.uniform(*severity)))
        for cues in (others, [*others, occluder]):
            rec = generator.with_cues(i, cues)
            rec["index"] = len(records)
            records.append(rec)
        joints.append(limb[1])
    if len(joints) < pairs:
        raise ValueError(f"only {len(joints)} of the {len(generator)} figures have a limb to occlude; asked for "
                         f"{pairs} pairs")
    return records, joints


def occlusion_check(model, generator: SyntheticPoseDataset, data_cfg, device: torch.device, pairs: int = 200,
                    seed: int = 0, draws: int = 64, batch_size: int = 32, amp: bool = False,
                    flip_coords: torch.Tensor | None = None) -> dict:
    """Predict ``pairs`` figures without and with an occluder on one limb (``occlusion_pairs``) and compare
    the distal joint's prediction (``occlusion_summary``). ``flip_coords`` turns on the flip test, as in
    ``predict_dataset``: the check then judges the same merged prediction as the rest of an evaluation."""
    records, joints = occlusion_pairs(generator, pairs, seed)
    dataset = PoseDataset.from_config(records, data_cfg, train=False, skeleton=generator.skeleton)
    preds = predict_dataset(model, make_loader(dataset, batch_size, Runtime(device), shuffle=False), device, amp,
                            flip_coords=flip_coords)
    if len(preds.get("index", ())) != len(records):
        raise RuntimeError("the occlusion check lost samples while predicting")
    out = {"pairs": pairs, **summary_at_joints(preds["mean"], preds["cov"], preds["target_true"], preds["cov_true"],
                                               joints, draws, seed)}
    out["by_severity"] = summary_by_severity(preds, joints, added_severities(records), draws, seed)
    if "occlusion_logits" in preds:  # does the occlusion head's score for the hidden joint rise too?
        logit = preds["occlusion_logits"][torch.arange(len(records)), torch.tensor(joints).repeat_interleave(2)]
        score_rose = logit[1::2] > logit[0::2]
        out["hidden_score_rise"] = float(score_rose.double().mean())
        out["by_hidden_score_rise"] = summary_by_score_rise(preds, joints, score_rose, draws, seed)
        out["by_hidden_probability"] = coverage_by_probability(preds, joints, torch.sigmoid(logit[1::2].double()),
                                                               draws, seed)
    return out


def added_severities(records: list[dict]) -> list[float]:
    """The severity of the occluder each pair of ``occlusion_pairs`` adds: the one cue of the occluded record
    (odd positions) that its plain twin lacks."""
    return [next(c.severity for c in occluded["cues"] if c not in plain["cues"])
            for plain, occluded in zip(records[0::2], records[1::2], strict=True)]


def summary_of_pairs(preds: dict, joints: list[int], pick: torch.Tensor, draws: int = 64, seed: int = 0) -> dict:
    """``summary_at_joints`` over the pairs numbered in ``pick`` (indices into the P pairs), with their count."""
    rows = torch.stack([2 * pick, 2 * pick + 1], 1).reshape(-1)
    return {"pairs": len(pick), **summary_at_joints(preds["mean"][rows], preds["cov"][rows], preds["target_true"][rows],
                                                    preds["cov_true"][rows], [joints[k] for k in pick.tolist()],
                                                    draws, seed)}


def summary_by_bins(preds: dict, joints: list[int], values: torch.Tensor, edges: tuple[float, ...],
                    keys: tuple[str, ...], draws: int = 64, seed: int = 0) -> list[dict]:
    """The pairs grouped by ``values`` (one per pair) into the bins between ``edges``, the last bin closed: for
    each bin with pairs, its edges, its count and the ``keys`` of its ``summary_of_pairs``."""
    groups = []
    for lo, hi in itertools.pairwise(edges):
        pick = torch.nonzero((values >= lo) & ((values < hi) | (hi == edges[-1])))[:, 0]
        if len(pick):
            part = summary_of_pairs(preds, joints, pick, draws, seed)
            groups.append({"from": lo, "to": hi, "pairs": part["pairs"], **{k: part[k] for k in keys}})
    return groups


# That range in thirds, for ``summary_by_severity``.
SEVERITY_BINS = tuple(float(x) for x in np.linspace(*OCCLUDER_SEVERITY, 4))


def summary_by_severity(preds: dict, joints: list[int], severity: list[float], draws: int = 64,
                        seed: int = 0) -> list[dict]:
    """The pairs grouped by the added occluder's severity (thirds of its range, the last bin closed): a stronger
    occluder widens the labels more, so an exactly calibrated covariance rises more often with it; a covariance
    whose rise does not grow with the severity misses occluders for another reason than their strength."""
    return summary_by_bins(preds, joints, torch.tensor(severity, dtype=torch.float64), SEVERITY_BINS,
                           ("spread_rise", "calibrated_spread_rise", "coverage@0.9_occluded"), draws, seed)


def summary_by_score_rise(preds: dict, joints: list[int], score_rose: torch.Tensor, draws: int = 64,
                          seed: int = 0) -> list[dict]:
    """The pairs split by whether the occlusion head's score for the occluded joint rose with the occluder
    (``score_rose``, P booleans): where the covariance follows the detector, its spread rises where the score
    does, and the pairs the detector misses show how far the detector holds the spread's rise back."""
    groups = []
    for rose in (True, False):
        pick = torch.nonzero(score_rose == rose)[:, 0]
        if len(pick):
            part = summary_of_pairs(preds, joints, pick, draws, seed)
            groups.append({"score_rose": rose, "pairs": part["pairs"], "spread_rise": part["spread_rise"],
                           "coverage@0.9_occluded": part["coverage@0.9_occluded"],
                           "error_occluded": part["error_occluded"]})
    return groups


# Bins of the occlusion head's probability that the occluded joint is hidden, for ``coverage_by_probability``.
PROBABILITY_BINS = (0.0, 0.2, 0.5, 0.8, 1.0)


def coverage_by_probability(preds: dict, joints: list[int], probability: torch.Tensor, draws: int = 64,
                            seed: int = 0) -> list[dict]:
    """The pairs grouped by ``probability`` (P: the head's probability that each pair's occluded joint is hidden,
    with the occluder), each group summarised as the whole check is (``summary_at_joints``). A covariance
    calibrated to an uncertain detector widens by the probability, so it holds the occluded labels only where the
    detector is sure: this shows how much of the occluded coverage the detector's confidence explains."""
    return summary_by_bins(preds, joints, probability, PROBABILITY_BINS,
                           ("spread_rise", "coverage@0.9_occluded", "coverage@0.9_plain"), draws, seed)


def summary_at_joints(mean: torch.Tensor, cov: torch.Tensor, truth: torch.Tensor, true_cov: torch.Tensor,
                      joints: list[int], draws: int = 64, seed: int = 0) -> dict:
    """``occlusion_summary`` at each pair's occluded joint, from whole predictions of the (plain, occluded) pairs:
    means and truths 2P x D, covariances 2P x D x D, and ``joints`` (P) as ``occlusion_pairs`` gives them."""
    joint = torch.tensor(joints).repeat_interleave(2)
    rows = torch.arange(len(joint))

    def at_joint(coords: torch.Tensor) -> torch.Tensor:
        return coords.double().reshape(len(joint), -1, 2)[rows, joint]

    return occlusion_summary(at_joint(mean), joint_blocks(cov.double())[rows, joint], at_joint(truth),
                             joint_blocks(true_cov.double())[rows, joint], draws, seed)


def occlusion_summary(mean: torch.Tensor, cov: torch.Tensor, truth: torch.Tensor, true_cov: torch.Tensor,
                      draws: int = 64, seed: int = 0) -> dict:
    """One joint per figure, figures in (plain, occluded) pairs: predicted ``mean`` (2P x 2) and 2 x 2 ``cov``,
    the noise-free ``truth`` and the labels' covariance ``true_cov``. Returns:

    - ``spread_rise``: share of pairs whose predicted spread sqrt(tr cov) grew with the occluder;
    - ``calibrated_spread_rise``: the same for a covariance exactly calibrated to the model's error on each
      figure, ``true_cov`` plus the outer product of ``truth - mean`` (``metrics.calibrated_covariance``): an
      oracle, what calibration alone would give;
    - ``spread_ratio`` / ``error_ratio`` / ``true_spread_ratio``: medians over pairs of occluded / plain for
      the predicted spread, the label error |label - mean| and the labels' own spread sqrt(tr true_cov);
    - ``coverage@0.9_plain`` / ``coverage@0.9_occluded``: share of ``draws`` labels per figure, drawn from
      N(truth, true_cov), inside the predicted 90 % ellipse;
    - ``scale_for_0.9_plain`` / ``scale_for_0.9_occluded``: the factor c that makes c x cov hold exactly 90 % of
      those labels (the 90 % quantile of their squared Mahalanobis distances over the chi-square radius): above 1
      the covariance is too small there, and c says by how much, where the coverage only says that it is;
    - ``error_plain`` / ``error_occluded``: mean label error."""
    n = mean.shape[0]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, draws, 2, generator=gen, dtype=torch.float64)
    labels = truth[:, None] + noise @ torch.linalg.cholesky(true_cov).transpose(-1, -2)
    residual = labels - mean[:, None]
    maha = (residual @ torch.linalg.inv(cov) * residual).sum(-1)  # n x draws
    inside = (maha <= CHI2_2D_90).double().mean(1)
    error = residual.norm(dim=-1).mean(1)
    spread = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).sqrt()
    true_spread = torch.diagonal(true_cov, dim1=-2, dim2=-1).sum(-1).sqrt()
    plain, occluded = slice(0, None, 2), slice(1, None, 2)

    def scale_for_90(rows: slice) -> float:  # every figure has as many draws: the pooled quantile is the mean's
        return float(torch.quantile(maha[rows].flatten(), 0.9) / CHI2_2D_90)

    def ratio(x: torch.Tensor) -> float:
        return float((x[occluded] / x[plain]).median())

    calibrated = torch.diagonal(calibrated_covariance(mean, truth, true_cov), dim1=-2, dim2=-1).sum(-1).sqrt()
    return {"spread_rise": float((spread[occluded] > spread[plain]).double().mean()),
            "calibrated_spread_rise": float((calibrated[occluded] > calibrated[plain]).double().mean()),
            "spread_ratio": ratio(spread), "error_ratio": ratio(error), "true_spread_ratio": ratio(true_spread),
            "coverage@0.9_plain": float(inside[plain].mean()), "coverage@0.9_occluded": float(inside[occluded].mean()),
            "scale_for_0.9_plain": scale_for_90(plain), "scale_for_0.9_occluded": scale_for_90(occluded),
            "error_plain": float(error[plain].mean()), "error_occluded": float(error[occluded].mean())}
