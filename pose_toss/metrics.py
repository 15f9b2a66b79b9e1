"""Evaluation metrics between Gaussians, batched, in float64 (exactness over speed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pose_toss.covariance import (
    CovarianceInputError,
    condition_gaussian,
    joint_correlations,
    masked_covariance,
    require_finite,
)
from pose_toss.losses import gaussian_nll, sqrtm_eigh


def w2_gaussian(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Exact squared 2-Wasserstein distance between N(mean1, cov1) and N(mean2, cov2), per sample:
    ``|m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``."""
    require_finite("w2_gaussian", mean1=mean1, cov1=cov1, mean2=mean2, cov2=cov2)
    m1, s1, m2, s2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root2 = sqrtm_eigh(s2)
    cross = sqrtm_eigh(root2 @ s1 @ root2)
    tr = torch.diagonal(s1 + s2 - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    return ((m1 - m2) ** 2).sum(-1) + tr.clamp_min(0)


def kl_gaussian(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, cov1) || N(mean2, cov2)) per sample."""
    require_finite("kl_gaussian", mean1=mean1, cov1=cov1, mean2=mean2, cov2=cov2)
    m1, s1, m2, s2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    c2, info = torch.linalg.cholesky_ex(s2)
    if bool((info > 0).any()):
        raise CovarianceInputError(f"kl_gaussian: cov2 is not positive definite in samples "
                                   f"{(info > 0).nonzero().flatten()[:8].tolist()}")
    d = m1.shape[-1]
    trace = torch.diagonal(torch.cholesky_solve(s1, c2), dim1=-2, dim2=-1).sum(-1)
    diff = torch.linalg.solve_triangular(c2, (m2 - m1).unsqueeze(-1), upper=False).squeeze(-1)
    logdet2 = 2 * torch.log(torch.diagonal(c2, dim1=-2, dim2=-1)).sum(-1)
    logdet1 = torch.linalg.slogdet(s1)[1]
    return 0.5 * (trace + (diff**2).sum(-1) - d + logdet2 - logdet1)


def tic_summary(share: torch.Tensor, singular_values: torch.Tensor, rtol: float = 1e-3) -> dict:
    """How much of a TIC covariance the Jacobian carries, over a set of samples.

    ``share`` (B): ``tr(eps1^2 J J^T) / tr(cov)``; ``singular_values`` (B x min(D, E)) of each J,
    descending. J's numerical rank counts singular values above ``rtol`` times the largest; its
    effective rank is ``exp`` of the entropy of the normalised singular values (Roy and Vetterli),
    min(D, E) when they are all equal and 1 when one dominates.
    """
    share, s = share.detach().double().cpu(), singular_values.detach().double().cpu()  # a few numbers: any device
    q = torch.quantile(share, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    rank = (s > rtol * s[:, :1]).sum(1) * (s[:, 0] > 0)
    p = s / s.sum(1, keepdim=True).clamp_min(1e-300)
    effective = torch.exp(-torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(1))
    return {"tic_share_q25": float(q[0]), "tic_share_median": float(q[1]), "tic_share_q75": float(q[2]),
            "jacobian_rank_median": float(rank.double().quantile(0.5)), "jacobian_rank_min": int(rank.min()),
            "jacobian_effective_rank_median": float(effective.quantile(0.5)), "jacobian_full_rank": int(s.shape[1])}


# --------------------------------------------------------------------------------------------------
# Pose metrics. Inputs: mean / target B x D (D = 2J, [x0, y0, ...]), cov B x D x D, visibility B x J.
# Every per-joint quantity is over visible joints only; invisible ones are NaN in per-joint arrays.
# --------------------------------------------------------------------------------------------------

# Probability grid for calibration (coverage of the p-ellipse of each joint's 2 x 2 marginal).
CALIBRATION_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _joints(x: torch.Tensor) -> torch.Tensor:
    return x.double().reshape(x.shape[0], -1, 2)


def joint_errors(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean error per joint, B x J (pixels)."""
    return (_joints(mean) - _joints(target)).norm(dim=-1)


def joint_blocks(cov: torch.Tensor) -> torch.Tensor:
    """Each joint's 2 x 2 marginal covariance, B x J x 2 x 2."""
    b, d, _ = cov.shape
    blocks = cov.double().reshape(b, d // 2, 2, d // 2, 2)
    idx = torch.arange(d // 2)
    return blocks[:, idx, :, idx, :].permute(1, 0, 2, 3)


def joint_spread(cov: torch.Tensor) -> torch.Tensor:
    """A joint's predicted spread: sqrt(trace of its 2 x 2 block), B x J (pixels)."""
    return torch.diagonal(joint_blocks(cov), dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt()


def joint_mahalanobis2(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of each joint's target under its 2 x 2 marginal, B x J."""
    r = (_joints(target) - _joints(mean)).unsqueeze(-1)
    return (r.transpose(-1, -2) @ torch.linalg.solve(joint_blocks(cov), r)).squeeze(-1).squeeze(-1)


def keypoint_similarity(mean: torch.Tensor, target: torch.Tensor, area: torch.Tensor, sigmas: torch.Tensor
                        ) -> torch.Tensor:
    """COCO's per-joint keypoint similarity ``exp(-d^2 / (2 s^2 kappa^2))``, B x J: d the joint's error,
    s^2 the person's area (B), kappa = 2 sigma (J), exactly as pycocotools computes it."""
    d2 = ((_joints(mean) - _joints(target)) ** 2).sum(-1)
    var = (2 * sigmas.double()) ** 2
    return torch.exp(-d2 / var / (area.double()[:, None] + torch.finfo(torch.float64).eps) / 2)


def expected_keypoint_similarity(cov: torch.Tensor, area: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """E[exp(-|e|^2 / (2 c))] with e ~ N(0, S_j) (each joint's 2 x 2 block of ``cov``) and c = s^2 kappa^2:
    the keypoint similarity to expect when the truth is distributed as the predicted Gaussian around the
    mean. A Gaussian integral: E[exp(-e^T e / (2c))] = det(I + S_j / c)^(-1/2). B x J, in (0, 1]."""
    blocks = joint_blocks(cov)
    c = (area.double()[:, None] + torch.finfo(torch.float64).eps) * (2 * sigmas.double()) ** 2  # B x J
    a, b, d = blocks[..., 0, 0] / c, blocks[..., 0, 1] / c, blocks[..., 1, 1] / c
    return ((1 + a) * (1 + d) - b * b).clamp_min(1.0).rsqrt()


def reliability(predicted: torch.Tensor, observed: torch.Tensor, bins: int = 10) -> dict:
    """Calibration of a predicted score against what happened: the scores (any shape, in [0, 1]) cut into
    ``bins`` equal-width bins, each bin's mean predicted score, mean observed value and count, and the
    expected calibration error sum_b (n_b / n) |observed_b - predicted_b| over the non-empty bins."""
    p, o = predicted.double().reshape(-1), observed.double().reshape(-1)
    if p.shape != o.shape:
        raise ValueError(f"{p.numel()} predicted scores but {o.numel()} observed values")
    which = (p * bins).long().clamp(0, bins - 1)
    count = torch.bincount(which, minlength=bins).double()
    mean_p = torch.bincount(which, p, minlength=bins) / count.clamp_min(1)
    mean_o = torch.bincount(which, o, minlength=bins) / count.clamp_min(1)
    full = count > 0
    ece = float(((count / count.sum().clamp_min(1)) * (mean_o - mean_p).abs())[full].sum())
    return {"edges": torch.linspace(0, 1, bins + 1).tolist(), "predicted": torch.where(full, mean_p, math.nan).tolist(),
            "observed": torch.where(full, mean_o, math.nan).tolist(), "count": count.long().tolist(), "ece": ece}


def torso_sizes(target: torch.Tensor, visibility: torch.Tensor, skeleton) -> torch.Tensor:
    """LSP's torso diameter per sample: left shoulder to right hip (right shoulder to left hip when
    that pair is missing); NaN when neither diagonal is visible. A skeleton without shoulders and hips (a hand,
    an animal's own keypoints) uses the diagonal of its visible joints' box instead (NaN below two joints)."""
    t, v = _joints(target), visibility.bool()
    sizes = torch.full((t.shape[0],), float("nan"), dtype=torch.float64)
    if not {"l_shoulder", "r_shoulder", "l_hip", "r_hip"} <= set(skeleton.joint_names):
        big = torch.finfo(torch.float64).max
        lo = torch.where(v.unsqueeze(-1), t.double(), big).amin(1)
        hi = torch.where(v.unsqueeze(-1), t.double(), -big).amax(1)
        return torch.where(v.sum(1) >= 2, (hi - lo).norm(dim=-1), sizes)
    for a, b in (("l_shoulder", "r_hip"), ("r_shoulder", "l_hip")):
        i, j = skeleton.index(a), skeleton.index(b)
        ok = v[:, i] & v[:, j] & torch.isnan(sizes)
        sizes[ok] = (t[ok, i] - t[ok, j]).norm(dim=-1)
    return sizes


def pck(errors: torch.Tensor, visibility: torch.Tensor, sizes: torch.Tensor, threshold: float
        ) -> tuple[float, torch.Tensor]:
    """Fraction of visible joints within ``threshold x size`` (overall, and per joint); samples whose
    normaliser is unknown (NaN) are left out."""
    valid = visibility.bool() & torch.isfinite(sizes).unsqueeze(1)
    hit = (errors <= threshold * sizes.unsqueeze(1)) & valid
    per_joint = hit.sum(0).double() / valid.sum(0).clamp_min(1)
    per_joint[valid.sum(0) == 0] = float("nan")
    overall = float(hit.sum() / valid.sum()) if valid.any() else float("nan")
    return overall, per_joint


def tac(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """Task-agnostic correlations (TIC-TAC): each visible joint's error after conditioning the
    predicted Gaussian on the ground truth of all the other visible joints. B x J, NaN where the
    joint is invisible or no other joint is visible."""

    b, d = mean.shape
    vis = visibility.bool()
    coord_vis = vis.repeat_interleave(2, dim=1)
    out = torch.full((b, d // 2), float("nan"), dtype=torch.float64)
    for j in range(d // 2):
        observed = coord_vis.clone()
        observed[:, 2 * j: 2 * j + 2] = False
        cond_mean, _ = condition_gaussian(mean.double(), cov.double(), observed, target.double())
        err = (cond_mean[:, 2 * j: 2 * j + 2] - target.double()[:, 2 * j: 2 * j + 2]).norm(dim=-1)
        ok = vis[:, j] & (vis.sum(1) > 1)
        out[ok, j] = err[ok]
    return out


def coverage(mahalanobis2: torch.Tensor, visibility: torch.Tensor, levels=CALIBRATION_LEVELS) -> torch.Tensor:
    """Observed coverage of each p-ellipse (inside iff Mahalanobis^2 <= -2 ln(1 - p)): L x J."""
    vis = visibility.bool()
    radii = torch.tensor([-2.0 * math.log(1.0 - p) for p in levels], dtype=torch.float64)
    inside = (mahalanobis2.unsqueeze(0) <= radii.reshape(-1, 1, 1)) & vis
    per_joint = inside.sum(1).double() / vis.sum(0).clamp_min(1)
    per_joint[:, vis.sum(0) == 0] = float("nan")
    return per_joint


def rank(x: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata)."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks[order])
    ranks[order] = (sums / counts)[inverse]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of the tie-averaged ranks)."""
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def sparsification(uncertainty: torch.Tensor, error: torch.Tensor, steps: int = 20) -> dict:
    """Sparsification curves: the mean error left after removing the fraction f of most uncertain
    joints (and, for the oracle, of largest errors), for f = 0, 1/steps, ..., (steps-1)/steps; both
    normalised by the mean error. ``ause`` is the area between them (trapezoid over f)."""
    n = len(error)
    err = error.double()
    fractions = torch.arange(steps, dtype=torch.float64) / steps
    by_unc = err[torch.argsort(uncertainty.double(), descending=True, stable=True)]
    by_err = torch.sort(err, descending=True).values

    def curve(sorted_err: torch.Tensor) -> torch.Tensor:
        # Mean of what remains after dropping the first round(f n) entries: suffix sums.
        suffix = torch.flip(torch.cumsum(torch.flip(sorted_err, [0]), 0), [0])
        drop = torch.round(fractions * n).long().clamp(max=n - 1)
        return suffix[drop] / (n - drop).double()

    scale = err.mean().clamp_min(1e-12)
    model, oracle = curve(by_unc) / scale, curve(by_err) / scale
    gap = model - oracle
    width = 1.0 / steps
    ause = float(width * (gap[:-1] + gap[1:]).sum() / 2)
    return {"fractions": fractions.tolist(), "model": model.tolist(), "oracle": oracle.tolist(), "ause": ause}


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling positives from negatives (Mann-Whitney U,
    ties count one half); NaN when either class is empty."""
    pos = positives.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rank(scores)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------------------------------
# Covariance against known noise sources (synthetic data). W2 / KL to the true label distribution are
# dominated by the model's own error (an identity covariance scores well there); these ask instead
# whether the predicted covariance puts its spread, its shape and its correlations where the labels'
# noise is. ``limbs`` L x 2 (joint pairs), ``limb_cue`` B x L: a limb's cue strength, 0 when clean.
# --------------------------------------------------------------------------------------------------


def major_axis_angle(blocks: torch.Tensor) -> torch.Tensor:
    """Angle (radians, mod pi) of the major eigenvector of each 2 x 2 symmetric block (... x 2 x 2):
    ``0.5 atan2(2 b, a - c)`` for ``[[a, b], [b, c]]``."""
    a, b, c = blocks[..., 0, 0], blocks[..., 0, 1], blocks[..., 1, 1]
    return 0.5 * torch.atan2(2 * b, a - c)


def canonical_correlation(cov: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """First canonical correlation between joints ``a`` and ``b`` (L indices each) under each Gaussian,
    B x L, in float64: ``covariance.joint_correlations`` for those pairs."""
    return joint_correlations(cov.double(), a.long(), b.long())


def within_joint_auroc(scores: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor) -> float:
    """The AUROC of ``scores`` for ``positives`` computed within each joint (column of B x J arrays, over its
    ``valid`` rows) and averaged over the joints where both classes occur. Pooling joints instead lets a
    joint's identity score: joints that are never positive and spread less pull a constant above 0.5."""
    values = []
    for j in range(scores.shape[1]):
        ok = valid[:, j].bool()
        value = auroc(scores[ok, j], positives[ok, j])
        if math.isfinite(value):
            values.append(value)
    return float(sum(values) / len(values)) if values else float("nan")


def mean_residual_covariance(mean: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor,
                             floor: float = 1e-6) -> torch.Tensor:
    """The best constant covariance for a set of predictions: each coordinate pair's mean of ``r_a r_b``
    (r = target - mean) over the samples where both joints are visible, projected onto the positive
    definite cone (eigenvalues at least ``floor`` times their mean). D x D, float64. Its 2 x 2 blocks are
    each joint's mean residual covariance; pairs never seen together are 0 (a never-seen coordinate 1)."""
    r = target.double() - mean.double()
    m = visibility.double().repeat_interleave(2, dim=1)
    r = torch.where(m > 0, r, 0.0)
    count = m.T @ m
    cov = (r.T @ r) / count.clamp_min(1)
    cov = torch.where(count > 0, cov, 0.0) + torch.diag((torch.diagonal(count) == 0).double())
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    evals = evals.clamp_min(floor * float(evals.clamp_min(0).mean().clamp_min(1e-12)))
    return (evecs * evals) @ evecs.T


def joints_on_limbs(limbs: torch.Tensor, selected: torch.Tensor, num_joints: int) -> torch.Tensor:
    """B x J: whether a joint belongs to any of its sample's ``selected`` limbs (B x L bool; ``limbs`` L x 2)."""
    member = torch.zeros(len(limbs), num_joints, dtype=torch.float64)
    rows = torch.arange(len(limbs))
    member[rows, limbs[:, 0].long()] = 1.0
    member[rows, limbs[:, 1].long()] = 1.0
    return (selected.double() @ member) > 0


def cue_aurocs(scores: torch.Tensor, visibility: torch.Tensor, limbs: torch.Tensor, limb_cue: torch.Tensor,
               limb_kind: torch.Tensor | None = None, cue_kinds: Sequence[str] = ()) -> dict:
    """Within-joint AUROCs (``within_joint_auroc``) of per-joint ``scores`` (B x J) for joints on a cued limb:
    ``all`` against joints on no cued limb, and with ``limb_kind`` (B x L, the index in ``cue_kinds`` of each
    limb's strongest cue, -1 when clean) one per kind: joints on a limb with that cue against joints on none,
    joints on other kinds' limbs left out."""
    vis = visibility.bool()
    cued_limb = limb_cue.double() > 0
    on_cued = joints_on_limbs(limbs, cued_limb, vis.shape[1])
    out = {"all": within_joint_auroc(scores, on_cued, vis)}
    if limb_kind is not None:
        for k, name in enumerate(cue_kinds):
            on_kind = joints_on_limbs(limbs, (limb_kind == k) & cued_limb, vis.shape[1])
            out[name] = within_joint_auroc(scores, on_kind, vis & (on_kind | ~on_cued))
    return out


def cue_metrics(cov: torch.Tensor, visibility: torch.Tensor, limbs: torch.Tensor, limb_cue: torch.Tensor,
                cov_true: torch.Tensor | None = None, strong: float = 0.5, limb_kind: torch.Tensor | None = None,
                cue_kinds: Sequence[str] = ()) -> dict:
    """Does the covariance find the noise that cues put on limbs?

    - ``cue_auroc_spread``: AUROC of a joint's spread sqrt(tr C_jj) for telling the joint on a cued limb
      from the same joint on none, within each joint and averaged over joints (``within_joint_auroc``);
    - ``cue_axis_cos``: on limbs whose cue strength is at least ``strong``, the mean |cos| of the angle
      between the predicted and the true major axis of each visible joint's 2 x 2 block (needs ``cov_true``);
    - ``cue_corr_auroc``: AUROC of the first canonical correlation between a limb's two joints for telling
      cued limbs from clean ones (both joints visible);
    - with ``limb_kind`` (B x L, the index in ``cue_kinds`` of each limb's strongest cue, -1 when clean):
      ``cue_auroc_spread_<kind>``, the spread's within-joint AUROC for joints on a limb cued by that kind
      against the same joints on no cued limb (joints on other kinds' limbs left out): which cues it sees.

    Read each beside the same number for reference covariances (``cue_metrics_with_references``): a
    constant scores 0.5 on both AUROCs, and axes that ignore the image score well above 2 / pi on |cos|
    because limbs have typical directions.
    """
    vis = visibility.bool()
    a, b = limbs[:, 0].long(), limbs[:, 1].long()
    cued_limb = limb_cue.double() > 0
    aurocs = cue_aurocs(joint_spread(cov), vis, limbs, limb_cue, limb_kind, cue_kinds)
    out = {"cue_auroc_spread": aurocs.pop("all")}
    out.update({f"cue_auroc_spread_{name}": value for name, value in aurocs.items()})
    pair_vis = vis[:, a] & vis[:, b]
    # Rounded: batched linear algebra gives equal matrices correlations that differ in the last bits, which
    # would break a constant covariance's ties at random.
    correlation = torch.round(canonical_correlation(cov, a, b), decimals=9)
    out["cue_corr_auroc"] = auroc(correlation[pair_vis], cued_limb[pair_vis])
    if cov_true is not None:
        on_strong = joints_on_limbs(limbs, (limb_cue.double() >= strong) & cued_limb, vis.shape[1]) & vis
        if on_strong.any():
            gap = major_axis_angle(joint_blocks(cov)) - major_axis_angle(joint_blocks(cov_true))
            out["cue_axis_cos"] = float(torch.cos(gap)[on_strong].abs().mean())
        else:
            out["cue_axis_cos"] = float("nan")
    return out


def calibrated_covariance(mean: torch.Tensor, target_true: torch.Tensor, cov_true: torch.Tensor) -> torch.Tensor:
    """``E[(y - mean)(y - mean)^T | image]`` for labels ``y ~ N(target_true, cov_true)``: ``cov_true`` plus the outer
    product of the mean's own error ``target_true - mean`` (B x D x D, float64). The covariance of a model exactly
    calibrated to its error on each figure: an oracle (knowing that error, one would correct the mean instead)."""
    bias = target_true.double() - mean.double()
    return cov_true.double() + bias.unsqueeze(-1) * bias.unsqueeze(-2)


def cue_metrics_with_references(cov: torch.Tensor, visibility: torch.Tensor, limbs: torch.Tensor,
                                limb_cue: torch.Tensor, cov_true: torch.Tensor | None = None,
                                constant: torch.Tensor | None = None, strong: float = 0.5,
                                limb_kind: torch.Tensor | None = None, cue_kinds: Sequence[str] = (),
                                calibrated: torch.Tensor | None = None) -> dict:
    """``cue_metrics`` of ``cov``, and the same numbers on the same figures for reference covariances, under
    the suffixes ``_constant`` (``constant``, D x D: each joint's mean residual covariance on the training
    split, no per-image information), ``_identity``, ``_calibrated`` (``calibrated``, B x D x D: what a
    covariance exactly calibrated to this model's error on each figure scores, ``calibrated_covariance``) and
    ``_true`` (the label noise's own covariance, which leaves the model's error out). A covariance shows what
    the image holds only where it beats the constant; the calibrated oracle is as far as calibration goes."""
    kinds = {"limb_kind": limb_kind, "cue_kinds": cue_kinds}
    out = cue_metrics(cov, visibility, limbs, limb_cue, cov_true, strong, **kinds)
    b, d = cov.shape[0], cov.shape[-1]
    references = {"identity": torch.eye(d, dtype=torch.float64).expand(b, d, d)}
    if constant is not None:
        references["constant"] = constant.double().expand(b, d, d)
    if calibrated is not None:
        references["calibrated"] = calibrated.double()
    if cov_true is not None:
        references["true"] = cov_true.double()
    for name, ref in references.items():
        for key, value in cue_metrics(ref, visibility, limbs, limb_cue, cov_true, strong, **kinds).items():
            if not (name == "true" and key == "cue_axis_cos"):  # 1 by definition
                out[f"{key}_{name}"] = value
    return out


# --------------------------------------------------------------------------------------------------
# Pseudo-labels against the label noise they stand for (synthetic data).
# --------------------------------------------------------------------------------------------------


def w2_barycenter(covs: torch.Tensor, iterations: int = 30, tol: float = 1e-9) -> torch.Tensor:
    """The constant covariance closest to N covariances in mean squared 2-Wasserstein distance (their
    barycenter), by the fixed point S <- S^-1/2 (mean_i (S^1/2 C_i S^1/2)^1/2)^2 S^-1/2 (Alvarez-Esteban et al.
    2016), started from the mean. D x D, float64."""
    c = covs.double()
    s = c.mean(0)
    for _ in range(iterations):
        root = sqrtm_eigh(s)
        evals, evecs = torch.linalg.eigh(root)
        inv_root = (evecs / evals.clamp_min(1e-300)) @ evecs.T
        middle = sqrtm_eigh(root @ c @ root).mean(0)
        new = inv_root @ middle @ middle @ inv_root
        new = 0.5 * (new + new.T)
        done = float((new - s).norm() / s.norm().clamp_min(1e-300)) < tol
        s = new
        if done:
            break
    return s


def pseudo_label_quality(labels: torch.Tensor, true_cov: torch.Tensor, visibility: torch.Tensor | None = None,
                         limbs: torch.Tensor | None = None, limb_cue: torch.Tensor | None = None,
                         constant: torch.Tensor | None = None) -> dict:
    """How well covariance pseudo-labels (N x D x D) carry the label noise (``true_cov``), over each sample's
    visible coordinates:

    - ``w2_to_true``: mean exact W2^2 between N(0, label) and N(0, truth);
    - ``w2_constant_to_true``: the same for the best constant label (``constant``, else the truths' W2
      barycenter): labels that carry the noise must beat it;
    - ``trace_spearman``: Spearman correlation of the label's trace with the truth's, over samples;
    - ``cue_auroc_spread``: within-joint AUROC of the labels' joint spreads for cued limbs (``limbs``,
      ``limb_cue`` as in ``cue_metrics``);
    - ``mean_trace`` and ``true_mean_trace``.
    """
    n, d = labels.shape[0], labels.shape[-1]
    vis = torch.ones(n, d // 2, dtype=torch.bool) if visibility is None else visibility.bool().cpu()
    m = vis.double().repeat_interleave(2, dim=1)
    label, truth = masked_covariance(labels.double().cpu(), m), masked_covariance(true_cov.double().cpu(), m)
    zero = torch.zeros(n, d, dtype=torch.float64)
    if constant is None:
        constant = w2_barycenter(truth[torch.linspace(0, n - 1, min(n, 2000)).long()])
    best = masked_covariance(constant.double().cpu().expand(n, d, d), m)
    trace = (torch.diagonal(label, dim1=-2, dim2=-1) * m).sum(-1)
    true_trace = (torch.diagonal(truth, dim1=-2, dim2=-1) * m).sum(-1)
    out = {"w2_to_true": float(w2_gaussian(zero, label, zero, truth).mean()),
           "w2_constant_to_true": float(w2_gaussian(zero, best, zero, truth).mean()),
           "trace_spearman": spearman(trace, true_trace),
           "mean_trace": float(trace.mean()), "true_mean_trace": float(true_trace.mean())}
    if limbs is not None and limb_cue is not None:
        out["cue_auroc_spread"] = cue_metrics(label, vis, limbs, limb_cue)["cue_auroc_spread"]
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite numbers among ``values`` (NaN, NaN when none; a
    std of 0 for one)."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def _nanmean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else float("nan")


def pose_metrics(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor,
                 skeleton, head_sizes: torch.Tensor | None = None, target_true: torch.Tensor | None = None,
                 cov_true: torch.Tensor | None = None, pck_threshold: float = 0.2, pckh_threshold: float = 0.5,
                 limbs: torch.Tensor | None = None, limb_cue: torch.Tensor | None = None,
                 reference_cov: torch.Tensor | None = None, limb_kind: torch.Tensor | None = None,
                 cue_kinds: Sequence[str] = ()) -> dict:
    """Every evaluation number of DESIGN.md's Metrics section, overall and per joint.

    All lengths in the pixels of ``target``. ``head_sizes`` (B) enables PCKh; ``target_true`` and
    ``cov_true`` (synthetic data) enable the exact W2 and KL(true || predicted) to the label
    distribution, computed over each sample's visible coordinates. ``limbs`` and ``limb_cue`` (the
    synthetic data's cued limbs) add ``cue_metrics_with_references``, with ``reference_cov`` (D x D, the
    training split's ``mean_residual_covariance``) as the constant reference; ``limb_kind`` and ``cue_kinds``
    add the spread's AUROC per cue kind.
    """

    mean, cov, target = mean.double(), cov.double(), target.double()
    vis = visibility.bool()
    if not vis.any():
        raise ValueError("no visible joint to evaluate")
    # Invisible joints' targets may hold anything (NaN, say); the predictions must be finite everywhere.
    coord_vis = vis.repeat_interleave(2, dim=1)
    require_finite("pose_metrics", mean=mean, cov=cov, target=torch.where(coord_vis, target, 0.0))
    target = torch.where(coord_vis, target, mean)
    err = joint_errors(mean, target)
    torso = torso_sizes(target, vis, skeleton)
    pck_all, pck_joint = pck(err, vis, torso, pck_threshold)
    spread = joint_spread(cov)
    maha = joint_mahalanobis2(mean, cov, target)
    cov_levels = coverage(maha, vis)
    inside_any = vis.sum(0) > 0
    overall_cov = coverage(maha.reshape(-1, 1), vis.reshape(-1, 1))[:, 0].tolist()
    tac_err = tac(mean, cov, target, vis)
    nll = gaussian_nll(mean, cov, target, vis.float())
    e, s = err[vis], spread[vis]
    misses = err > pck_threshold * torso.unsqueeze(1)
    judged = vis & torch.isfinite(torso).unsqueeze(1)
    sparse = sparsification(s, e)
    out = {
        "num_samples": int(mean.shape[0]),
        "num_joints_visible": int(vis.sum()),
        "mean_joint_error": float(e.mean()),
        "mse": float((e**2).mean()),
        f"pck@{pck_threshold:g}": pck_all,
        "nll": float(nll.mean()),
        "nll_per_coordinate": float(nll.sum() / (2 * vis.sum())),
        "tac": _nanmean(tac_err),
        "coverage@0.5": overall_cov[CALIBRATION_LEVELS.index(0.5)],
        "coverage@0.9": overall_cov[CALIBRATION_LEVELS.index(0.9)],
        "coverage@0.95": overall_cov[CALIBRATION_LEVELS.index(0.95)],
        "calibration_gap": float(sum(abs(c - p) for c, p in zip(overall_cov, CALIBRATION_LEVELS, strict=True))
                                 / len(CALIBRATION_LEVELS)),
        "spearman": spearman(s, e),
        "ause": sparse["ause"],
        "auroc_pck_miss": auroc(spread[judged], misses[judged]),
        "mean_spread": float(s.mean()),
    }
    per_joint = {
        "name": list(skeleton.joint_names),
        "visible": vis.sum(0).tolist(),
        "error": [_nanmean(err[vis[:, j], j]) for j in range(vis.shape[1])],
        f"pck@{pck_threshold:g}": pck_joint.tolist(),
        "tac": [_nanmean(tac_err[:, j]) for j in range(vis.shape[1])],
        "spread": [_nanmean(spread[vis[:, j], j]) for j in range(vis.shape[1])],
        "coverage@0.9": cov_levels[CALIBRATION_LEVELS.index(0.9)].tolist(),
    }
    if head_sizes is not None:
        out[f"pckh@{pckh_threshold:g}"], pckh_joint = pck(err, vis, head_sizes.double(), pckh_threshold)
        per_joint[f"pckh@{pckh_threshold:g}"] = pckh_joint.tolist()
    if target_true is not None and cov_true is not None:
        m = vis.double().repeat_interleave(2, dim=1)
        # Invisible coordinates become identical unit blocks on both sides: they add nothing.
        t_mean, p_mean = target_true.double() * m, mean * m
        t_cov, p_cov = masked_covariance(cov_true.double(), m), masked_covariance(cov, m)
        out["w2_to_true"] = float(w2_gaussian(p_mean, p_cov, t_mean, t_cov).mean())
        out["w2_cov_to_true"] = float(w2_gaussian(t_mean, p_cov, t_mean, t_cov).mean())
        out["kl_true_to_pred"] = float(kl_gaussian(t_mean, t_cov, p_mean, p_cov).mean())
        # How much of the predicted covariance the label noise can account for; the rest is the model's error.
        noise_trace = (torch.diagonal(cov_true.double(), dim1=-2, dim2=-1) * m).sum()
        out["label_noise_share"] = float(noise_trace / (torch.diagonal(cov, dim1=-2, dim2=-1) * m).sum())
    if limbs is not None and limb_cue is not None:
        # Invisible joints' true positions may be anything (NaN): their error counts as 0, as they are left out.
        calibrated = (calibrated_covariance(mean, torch.where(coord_vis, target_true.double(), mean), cov_true)
                      if target_true is not None and cov_true is not None else None)
        out.update(cue_metrics_with_references(cov, vis, limbs, limb_cue, cov_true, reference_cov,
                                               limb_kind=limb_kind, cue_kinds=cue_kinds, calibrated=calibrated))
    out["per_joint"] = per_joint
    out["calibration"] = {"levels": list(CALIBRATION_LEVELS), "overall": overall_cov,
                          "per_joint": cov_levels.T.tolist(), "has_joint": inside_any.tolist()}
    out["sparsification"] = sparse
    return out
