"""Running a model over a dataset: its predictions, and the metrics they give (training validation and
``pose-toss eval`` alike)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from pose_toss.covariance import equal_mixture, taylor_diagnostics, unmirror
from pose_toss.data.synthetic import CUE_KINDS, CUE_LIMBS, record_cues
from pose_toss.engine.runtime import autocast_context
from pose_toss.metrics import mean_residual_covariance, pose_metrics, tic_summary, within_joint_auroc

OPTIONAL_KEYS = ("target_true", "cov_true", "head_size", "occluded")


@torch.no_grad()
def predict_dataset(model, loader, device: torch.device, amp: bool = False, progress: bool = False,
                    desc: str = "predicting", flip_coords: torch.Tensor | None = None,
                    unreadable: list | None = None) -> dict[str, torch.Tensor]:
    """Means, covariances and the batch's labels for every sample the loader yields, on the CPU.

    The model runs in eval mode; TIC's Jacobian still needs autograd, which ``torch.func`` enables
    for itself inside ``no_grad``. Duplicates (padded distributed shards) are dropped by index.

    ``flip_coords`` (the skeleton's left/right permutation of the 2J coordinates) turns on the flip
    test: each crop is also predicted mirrored, and the two Gaussians are merged by moment matching.
    The single-pass means are kept as ``mean_no_flip``.

    A heatmap model also gives ``heatmap_max`` (B x J, each joint's largest soft-argmax probability). A TIC
    model also gives, per sample, ``tic_share`` (tr(eps1^2 J J^T) / tr(cov)) and J's singular
    values (``jacobian_singular_values``), from the single pass. A model with an occlusion head also gives
    ``occlusion_logits`` (B x J), from the single pass.

    Samples whose image could not be read are left out; ``unreadable`` (a list) receives their messages.
    """
    was_training = model.training
    model.eval()
    cols: dict[str, list] = {k: [] for k in ("mean", "cov", "target", "visibility", "affine", "index",
                                             "mean_no_flip", "tic_share", "jacobian_singular_values", "heatmap_max",
                                             "occlusion_logits", *OPTIONAL_KEYS)}
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            if unreadable is not None:
                unreadable.extend(batch.get("missing_images", ()))
            if "image" not in batch:
                continue
            images = batch["image"].to(device, non_blocking=True)
            with autocast_context(device, amp):
                out = model(images)
            mean, cov = out.mean.float(), out.cov.float()
            if out.heatmaps is not None:  # each joint's most probable pixel's probability (a common keypoint score)
                cols["heatmap_max"].append(model.head.distribution(out.heatmaps).flatten(2).amax(-1).float().cpu())
            if out.occlusion_logits is not None:
                cols["occlusion_logits"].append(out.occlusion_logits.float().cpu())
            if out.tic is not None:
                share, singular = taylor_diagnostics(out.tic.jacobian, out.tic.eps1, cov)
                cols["tic_share"].append(share.float().cpu())
                cols["jacobian_singular_values"].append(singular.float().cpu())
            if flip_coords is not None:
                with autocast_context(device, amp):
                    mirrored = model(images.flip(-1))
                back = unmirror(mirrored.mean.float(), mirrored.cov.float(), flip_coords, images.shape[-1])
                cols["mean_no_flip"].append(mean.cpu())
                mean, cov = equal_mixture(mean, cov, *back)
            cols["mean"].append(mean.cpu())
            cols["cov"].append(cov.cpu())
            for key in ("target", "visibility", "affine", *OPTIONAL_KEYS):
                if key in batch:
                    cols[key].append(torch.as_tensor(batch[key]))
            cols["index"].append(torch.as_tensor(batch["index"]))
    finally:
        model.train(was_training)
    preds = {k: torch.cat(v) for k, v in cols.items() if v}
    if "index" in preds:
        idx = preds["index"]
        order = torch.argsort(idx, stable=True)
        keep = torch.ones(len(idx), dtype=torch.bool)
        keep[1:] = idx[order][1:] != idx[order][:-1]
        preds = {k: v[order][keep] for k, v in preds.items()}
    return preds


@torch.no_grad()
def residual_reference(model, loader, device: torch.device, amp: bool = False) -> torch.Tensor:
    """The cue metrics' constant reference: ``metrics.mean_residual_covariance`` of the model's means over the
    loader's samples (the training split, unaugmented), D x D. Only the means are computed."""
    was_training = model.training
    model.eval()
    means, targets, vis = [], [], []
    try:
        for batch in loader:
            if "image" not in batch:
                continue
            with autocast_context(device, amp):
                out = model(batch["image"].to(device, non_blocking=True), with_covariance=False)
            means.append(out.mean.float().cpu())
            targets.append(batch["target"])
            vis.append(batch["visibility"])
    finally:
        model.train(was_training)
    if not means:
        raise ValueError("no readable sample to fit the constant reference covariance on")
    return mean_residual_covariance(torch.cat(means), torch.cat(targets), torch.cat(vis))


def non_finite_predictions(preds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dataset indices of the samples whose predicted mean or covariance holds NaN or Inf."""
    if "mean" not in preds:
        return torch.zeros(0, dtype=torch.long)
    bad = ~torch.isfinite(preds["mean"]).all(1) | ~torch.isfinite(preds["cov"]).flatten(1).all(1)
    return preds["index"][bad]


def attach_cues(preds: dict[str, torch.Tensor], records: list[dict]) -> dict[str, torch.Tensor]:
    """Add ``limb_cue`` (B x limbs, the synthetic cues' strengths) and ``limb_cue_kind`` (B x limbs, each limb's
    strongest cue as an index in ``CUE_KINDS``, -1 when clean) when every predicted record knows its cues."""
    cues = record_cues([records[int(i)] for i in preds["index"]])
    if cues is not None:
        preds["limb_cue"], preds["limb_cue_kind"] = (torch.from_numpy(a) for a in cues)
    return preds


def metrics_from_predictions(preds: dict[str, torch.Tensor], skeleton, reference_cov: torch.Tensor | None = None
                             ) -> dict:
    """``pose_metrics`` of a prediction set; ``reference_cov`` (``residual_reference``) is the constant the cue
    metrics are read against."""
    cued = "limb_cue" in preds
    metrics = pose_metrics(preds["mean"], preds["cov"], preds["target"], preds["visibility"], skeleton,
                           head_sizes=preds.get("head_size"), target_true=preds.get("target_true"),
                           cov_true=preds.get("cov_true"), limbs=torch.tensor(CUE_LIMBS) if cued else None,
                           limb_cue=preds.get("limb_cue"), reference_cov=reference_cov,
                           limb_kind=preds.get("limb_cue_kind"), cue_kinds=CUE_KINDS)
    if "occlusion_logits" in preds and "occluded" in preds and bool((preds["occluded"] >= 0).any()):
        # How well the occlusion head finds the hidden joints, within each joint (as the cue AUROC).
        flags = preds["occluded"]
        metrics["occlusion_auroc"] = within_joint_auroc(preds["occlusion_logits"], flags > 0, flags >= 0)
    if "tic_share" in preds:
        metrics.update(tic_summary(preds["tic_share"], preds["jacobian_singular_values"]))
    return metrics


def scalar_metrics(metrics: dict) -> dict:
    """The single-number entries (what metrics.jsonl and comparison tables hold)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
