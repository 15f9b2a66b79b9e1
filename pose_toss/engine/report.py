"""Markdown for evaluation reports and method comparisons."""

from __future__ import annotations

import math

import numpy as np

from pose_toss.data.dataset import sample_image_rgb
from pose_toss.data.synthetic import CUE_KINDS
from pose_toss.viz.draw import contact_sheet, draw_crosses, draw_pose_scaled, with_legend

# (metric key, column title, lower is better?)
SUMMARY_COLUMNS = (
    ("mean_joint_error", "error px", True),
    ("mse", "MSE px²", True),
    ("pck@0.2", "PCK@0.2", False),
    ("pckh@0.5", "PCKh@0.5", False),
    ("coco_ap", "AP (OKS)", False),
    ("nll", "NLL", True),
    ("tac", "TAC px", True),
    ("coverage@0.5", "cov@0.5", None),
    ("coverage@0.9", "cov@0.9", None),
    ("coverage@0.95", "cov@0.95", None),
    ("calibration_gap", "calib. gap", True),
    ("spearman", "Spearman", False),
    ("ause", "AUSE", True),
    ("auroc_pck_miss", "AUROC miss", False),
    ("w2_to_true", "W₂² to truth", True),
    ("kl_true_to_pred", "KL(truth‖pred)", True),
    ("label_noise_share", "noise share", None),
    ("cue_auroc_spread", "AUROC cued", False),
    ("cue_axis_cos", "axis \\|cos\\|", False),
    ("cue_axis_cos_constant", "axis \\|cos\\| of a constant", None),
    ("cue_corr_auroc", "AUROC corr.", False),
    ("occlusion_spread_rise", "occluder: spread rises", False),
    ("occlusion_coverage@0.9_occluded", "occluder: cov@0.9", None),
    ("occlusion_auroc", "AUROC hidden", False),
    ("tic_share_median", "J share of Σ", None),
    ("jacobian_rank_median", "rank J", None),
)
# Coverage is best when closest to its nominal level.
NOMINAL = {"coverage@0.5": 0.5, "coverage@0.9": 0.9, "coverage@0.95": 0.95, "occlusion_coverage@0.9_occluded": 0.9}


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    return f"{v:.3g}" if a < 10 else f"{v:.1f}" if a < 1000 else f"{v:.0f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def columns_present(rows: list[dict]) -> list[tuple]:
    return [c for c in SUMMARY_COLUMNS if any(isinstance(r.get(c[0]), (int, float)) for r in rows)]


def best_marks(rows: list[dict], key: str, lower: bool | None) -> set[int]:
    vals = [(i, r.get(key)) for i, r in enumerate(rows)]
    vals = [(i, v) for i, v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return set()
    if lower is None and key not in NOMINAL:  # descriptive columns: no best
        return set()
    if lower is None:
        score = {i: abs(v - NOMINAL[key]) for i, v in vals}
    else:
        score = {i: (v if lower else -v) for i, v in vals}
    best = min(score.values())
    return {i for i, s in score.items() if s <= best + 1e-12}


def comparison_table(names: list[str], rows: list[dict], extra: tuple[str, str] | None = None,
                     mark_best: bool = True, stds: list[dict] | None = None) -> str:
    """Rows of scalar metrics as one markdown table; the best value per column in bold. ``stds`` (one
    dict per row) turns each cell into "mean ± std", ``rows`` then holding the means."""
    cols = columns_present(rows)
    header = ["method"] + [c[1] for c in cols] + ([extra[1]] if extra else [])
    body = []
    marks = {c[0]: best_marks(rows, c[0], c[2]) if mark_best else set() for c in cols}
    for i, (name, r) in enumerate(zip(names, rows, strict=True)):
        cells = [name]
        for key, _, _ in cols:
            s = fmt(r.get(key))
            spread = stds[i].get(key) if stds is not None else None
            if _finite(spread) and _finite(r.get(key)):
                s += f" ± {fmt(spread)}"
            cells.append(f"**{s}**" if i in marks[key] else s)
        if extra:
            cells.append(fmt(r.get(extra[0])))
        body.append(cells)
    return table(header, body)


def _finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


CUE_METRICS = (("cue_auroc_spread", "AUROC of the spread, cued joints (within each joint)"),
               ("cue_corr_auroc", "AUROC of a limb's joint correlation, cued limbs"),
               ("cue_axis_cos", "major axis \\|cos\\| against the truth, strongly cued limbs"))
KIND_PHRASES = {"occluder": "an occluder", "blur": "blur", "fade": "fading"}
CUE_REFERENCES = (("", "this model"), ("_constant", "per-joint constant"), ("_identity", "identity"),
                  ("_calibrated", "exactly calibrated to this model (oracle)"), ("_true", "true label noise"))


def cue_section(metrics: dict) -> list[str]:
    """Markdown lines: the cue metrics beside the reference covariances', and the occlusion check."""
    if "cue_auroc_spread" not in metrics:
        return []
    by_kind = [(f"cue_auroc_spread_{kind}", f"… joints on a limb with {KIND_PHRASES[kind]}, against clean ones")
               for kind in CUE_KINDS if f"cue_auroc_spread_{kind}" in metrics]
    present = [suffix for suffix, _ in CUE_REFERENCES if suffix == "" or f"cue_auroc_spread{suffix}" in metrics]
    rows = [[title] + [metrics.get(key + suffix) for suffix in present]
            for key, title in (CUE_METRICS[0], *by_kind, *CUE_METRICS[1:])]
    out = ["## Does the covariance see the cues?", "",
           "The same numbers on the same figures for reference covariances: a per-joint constant (each joint's mean "
           f"residual covariance, fitted on {metrics.get('cue_reference_from', 'the training split')}), the identity, "
           "the covariance of a model exactly calibrated to this model's error on each figure (the label noise plus "
           "the mean's own error there: an oracle, as far as calibration can go) and the label noise's own covariance "
           "(which leaves the model's error out). A constant scores 0.5 on both AUROCs; axes that ignore the image "
           "still score above 2/π on |cos| because limbs have typical directions. The model shows what the image "
           "holds only where it beats the constant.", "",
           table(["metric"] + [name for suffix, name in CUE_REFERENCES if suffix in present], rows), ""]
    occ = metrics.get("occlusion")
    if occ:
        out += ["### An occluder added", "",
                f"{occ['pairs']} test figures rendered twice, the same scene and pose, once with an occluder added on "
                "one limb; at the limb's end (its distal joint):", "",
                table(["", "without", "with the occluder", "ratio (median)"],
                      [["predicted spread √tr Σ", "", "", occ["spread_ratio"]],
                       ["label error px", occ["error_plain"], occ["error_occluded"], occ["error_ratio"]],
                       ["labels' own spread", "", "", occ["true_spread_ratio"]],
                       ["labels inside the 90 % ellipse", occ["coverage@0.9_plain"], occ["coverage@0.9_occluded"],
                        ""],
                       ["Σ × c holds 90 % at c =", occ.get("scale_for_0.9_plain", ""),
                        occ.get("scale_for_0.9_occluded", ""), ""]]), "",
                f"The predicted spread grew with the occluder in {100 * occ['spread_rise']:.0f} % of the pairs"
                + (f"; that of a covariance exactly calibrated to this model's error on each figure (an oracle) in "
                   f"{100 * occ['calibrated_spread_rise']:.0f} %." if "calibrated_spread_rise" in occ else "."), ""]
        if occ.get("by_severity"):
            out += ["By the added occluder's severity (a stronger one widens the labels more):", "",
                    table(["severity", "pairs", "spread rises", "exactly calibrated: rises",
                           "labels inside the 90 % ellipse, occluded"],
                          [[f"{g['from']:.2f}–{g['to']:.2f}", str(g["pairs"]), g["spread_rise"],
                            g["calibrated_spread_rise"], g["coverage@0.9_occluded"]] for g in occ["by_severity"]]), ""]
        if occ.get("by_hidden_score_rise"):
            out += ["By whether the occlusion head's score for the occluded joint rose with the occluder:", "",
                    table(["head's score", "pairs", "spread rises", "labels inside the 90 % ellipse, occluded",
                           "label error px, occluded"],
                          [["rose" if g["score_rose"] else "did not rise", str(g["pairs"]), g["spread_rise"],
                            g["coverage@0.9_occluded"], g["error_occluded"]] for g in occ["by_hidden_score_rise"]]),
                    ""]
        if occ.get("by_hidden_probability"):
            out += ["By the occlusion head's probability that the occluded joint is hidden (with the occluder). A "
                    "covariance calibrated to an uncertain detector widens by that probability, so it holds the "
                    "occluded labels only where the detector is sure:", "",
                    table(["probability", "pairs", "spread rises", "labels inside the 90 % ellipse, occluded",
                           "without"],
                          [[f"{g['from']:.1f}–{g['to']:.1f}", str(g["pairs"]), g["spread_rise"],
                            g["coverage@0.9_occluded"], g["coverage@0.9_plain"]]
                           for g in occ["by_hidden_probability"]]), ""]
    return out


def evaluation_report(metrics: dict, title: str, context: list[str], pictures: list[str],
                      plots: dict[str, str] | None = None) -> str:
    pj = metrics["per_joint"]
    cal = metrics["calibration"]
    out = [f"# {title}", ""]
    out += [f"- {c}" for c in context] + [""]
    out += ["## Summary", "", comparison_table(["model"], [metrics], mark_best=False), ""]
    out += [f"Samples: {metrics['num_samples']}, visible joints: {metrics['num_joints_visible']}. "
            f"Predicting the {metrics.get('mean_pose_from', 'evaluated set')}'s mean pose for everybody instead "
            f"gives {fmt(metrics.get('mean_pose_error'))} px mean joint error.", ""]
    left_out = metrics.get("unreadable_images") or []
    if left_out:
        out += [f"**{len(left_out)} of {metrics.get('samples_given', '?')} samples left out**: their images could "
                f"not be read, so every number here is over the other {metrics['num_samples']}.", ""]
        out += [f"- {m}" for m in left_out[:20]] + ([f"- ... and {len(left_out) - 20} more"] if len(left_out) > 20
                                                    else []) + [""]
    damaged = metrics.get("damaged_images") or []
    if damaged:
        out += [f"**{len(damaged)} damaged images were predicted on** (OpenCV decodes what it can of them):", ""]
        out += [f"- {m}" for m in damaged[:20]] + [""]
    coco = metrics.get("coco")
    if coco:
        out += ["## COCO keypoint AP", "",
                "pycocotools' COCOeval (`iouType=\"keypoints\"`) of `predictions.json` against these people "
                f"({metrics['num_samples']}, top-down from their boxes), OKS sigmas "
                f"{', '.join(f'{v:g}' for v in metrics['oks_sigmas'])}; each person's score is their expected "
                "OKS under the predicted covariance, each keypoint's third value its expected keypoint similarity.",
                ""]
        out += [table(list(coco), [[coco[k] for k in coco]]), ""]
        by_score = metrics.get("ap_by_score") or {}
        if by_score:
            out += ["AP of the same predictions with people ranked by their expected OKS, by the mean of their "
                    "heatmaps' maximum probabilities, or by nothing (a constant score):", ""]
            rows = [[boxes, score] + [ap.get(k) for k in ("AP", "AP50", "AP75", "AR")]
                    for boxes, scores in by_score.items() for score, ap in scores.items()]
            out += [table(["boxes", "score", "AP", "AP50", "AP75", "AR"], rows), ""]
        rel = metrics.get("keypoint_reliability")
        if rel:
            out += ["Each keypoint's confidence (its expected keypoint similarity) against the keypoint similarity "
                    f"it then had, visible joints, 10 bins: expected calibration error {fmt(rel['ece'])}.", ""]
            if "keypoint_reliability" in (plots or {}):
                out += [f"![keypoint confidence calibration]({plots['keypoint_reliability']})", ""]
    out += ["## Per joint", ""]
    keys = [k for k in pj if k not in ("name",)]
    out += [table(["joint"] + keys, [[pj["name"][j]] + [pj[k][j] for k in keys] for j in range(len(pj["name"]))]),
            ""]
    out += ["## Calibration", "",
            "Observed fraction of ground truths inside each joint's predicted p-ellipse (2×2 marginal).", ""]
    out += [table(["nominal p", "observed"], [[f"{p:.2f}", c] for p, c in zip(cal["levels"], cal["overall"],
                                                                              strict=True)]), ""]
    plots = plots or {}
    if "calibration" in plots:
        out += [f"![calibration: nominal against observed coverage, per joint and overall]({plots['calibration']})", ""]
    sp = metrics["sparsification"]
    out += ["## Sparsification", "",
            "Mean error left (relative to all joints) after removing the most uncertain fraction, against the "
            f"oracle that removes the largest errors. Area between them (AUSE): {fmt(sp['ause'])}.", ""]
    picks = [i for i, f in enumerate(sp["fractions"]) if round(f * 20) % 4 == 0]
    out += [table(["removed", "model", "oracle"], [[f"{sp['fractions'][i]:.2f}", sp["model"][i], sp["oracle"][i]]
                                                  for i in picks]), ""]
    if "sparsification" in plots:
        out += [f"![sparsification curve against the oracle]({plots['sparsification']})", ""]
    if "tic_share_median" in metrics:
        out += ["## TIC: how much of Σ the Jacobian carries", "",
                "Σ = ε₁² J Jᵀ + L Lᵀ (+ floor), J = ∂mean/∂z. Share of the trace that the Taylor term carries, "
                "over the evaluated samples, and J's rank (singular values above 10⁻³ of the largest) and "
                "effective rank (exp of the entropy of its normalised singular values).", ""]
        out += [table(["tr(ε₁²JJᵀ)/tr(Σ) q25", "median", "q75", "rank J median", "rank J min", "effective rank",
                       "full rank"],
                      [[metrics["tic_share_q25"], metrics["tic_share_median"], metrics["tic_share_q75"],
                        metrics["jacobian_rank_median"], metrics["jacobian_rank_min"],
                        metrics["jacobian_effective_rank_median"], metrics["jacobian_full_rank"]]]), ""]
    out += cue_section(metrics)
    if "training" in plots:
        out += ["## Training", "", f"![training curves from metrics.jsonl]({plots['training']})", ""]
    if pictures:
        out += ["## Pictures", ""] + [f"![{p}]({p})" for p in pictures] + [""]
    out += ["Definitions: errors in crop pixels; NLL of the visible coordinates; TAC = error of each joint after "
            "conditioning on the other visible joints' ground truth; coverage of the p-ellipse "
            "(Mahalanobis² ≤ −2 ln(1 − p)); Spearman and AUSE between a joint's spread √tr Σ_jj and its error; "
            "AUROC of the spread for joints that miss PCK@0.2; W₂² and KL(truth‖pred) to the true label "
            "distribution N(joints_true, cov_true) on synthetic data; noise share = the label noise's trace over the "
            "predicted covariance's. Synthetic cues: AUROC cued = the spread's AUROC for a joint on a cued limb "
            "against the same joint on none, averaged over joints; axis \\|cos\\| = alignment of each joint's "
            "predicted and true major axis on strongly cued limbs; AUROC corr. = the canonical correlation of a "
            "limb's two joints telling cued limbs from clean ones (references: the section above).", ""]
    return "\n".join(out)


def prediction_pictures(dataset, preds: dict, skeleton, count: int = 16, tile: int = 256) -> np.ndarray:
    """A contact sheet of crops with the predicted pose, its 50% / 90% joint ellipses and the labels (crosses),
    with a legend."""
    tiles = []
    for n in range(min(count, len(preds["index"]))):
        sample = dataset[int(preds["index"][n])]
        image = sample_image_rgb(sample)
        factor = tile / image.shape[0]
        drawn = draw_pose_scaled(image, preds["mean"][n].numpy(), preds["cov"][n].numpy(), factor,
                                 skeleton=skeleton, levels=(0.5, 0.9))
        labels = (sample["target"].numpy().reshape(-1, 2) + 0.5) * factor - 0.5
        tiles.append(draw_crosses(drawn, labels[sample["visibility"].numpy() > 0]))
    return with_legend(contact_sheet(tiles, cols=4, tile_size=tile), (0.5, 0.9),
                       ["white crosses: the labels (ground truth) of the visible joints"])
