"""Stage objectives: which loss function a stage calls, with what, and pseudo-labels moved into the
batch's frame. Pure functions over tensors; the math itself lives in ``pose_toss.losses``."""

from __future__ import annotations

import torch

from pose_toss import losses
from pose_toss.covariance import linear_map_covariance


def labels_in_batch_frame(cov: torch.Tensor, bank_affine: torch.Tensor, batch_affine: torch.Tensor,
                          flip_coordinate_index: torch.Tensor, sqrt: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move bank pseudo-covariances (stored in the unaugmented crop frame) into an augmented batch.

    Both affines map the original image to a crop, so ``L = A_batch A_bank^-1`` (linear parts) takes
    the bank frame to the batch frame; a mirror (det L < 0) also swaps left and right joints, as the
    data pipeline does. Returns the covariances and their symmetric square roots. Crops keep the
    aspect ratio, so L is a similarity ``s Q`` (Q orthogonal) and the bank's roots ``sqrt`` move
    exactly as ``s Q R Q^T``; without them, or for any other map, the roots come from ``eigh``.
    """
    lin = batch_affine[:, :, :2].double() @ torch.linalg.inv(bank_affine[:, :, :2].double())
    moved = linear_map_covariance(cov.double(), lin)
    det = torch.linalg.det(lin)
    scale = det.abs().sqrt()
    similar = torch.allclose(lin @ lin.transpose(1, 2), scale[:, None, None] ** 2 * torch.eye(2, dtype=lin.dtype,
                             device=lin.device), rtol=1e-6, atol=1e-9 * float(scale.max().clamp_min(1.0)) ** 2)
    root = None
    if sqrt is not None and similar:
        root = linear_map_covariance(sqrt.double(), lin) / scale[:, None, None]
    flipped = det < 0
    if flipped.any():
        perm = flip_coordinate_index.to(cov.device)
        moved[flipped] = moved[flipped][:, perm][:, :, perm]
        if root is not None:
            root[flipped] = root[flipped][:, perm][:, :, perm]
    moved = 0.5 * (moved + moved.transpose(-1, -2))
    if root is None:
        root = losses.sqrtm_eigh(moved)
    return moved.float(), (0.5 * (root + root.transpose(-1, -2))).float()


def training_loss(net, model, batch: dict, loss: str, device: torch.device, *, beta: float = 0.5,
                  pseudo: tuple[torch.Tensor, torch.Tensor] | None = None, heatmap_weight: float = 0.0,
                  variance_scale: float = 1.0, amp: bool = False, stats: dict | None = None
                  ) -> tuple[torch.Tensor, float]:
    """One training step's loss: the stage loss per coordinate plus the weighted heatmap term.

    ``net`` is what runs the forward (the model, or its DistributedDataParallel wrapper), ``model`` the
    bare model; ``pseudo``: (covariances, square roots) already in the batch's frame. Returns the loss
    to back-propagate and the stage loss's batch mean (what the logs show).
    """
    from pose_toss.engine.evaluation import autocast_context

    images = batch["image"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    vis = batch["visibility"].to(device, non_blocking=True)
    with autocast_context(device, amp):
        out = net(images, with_covariance=loss != "mse")  # MSE needs no covariance
    pseudo_cov, pseudo_sqrt = pseudo if pseudo is not None else (None, None)
    per_sample = stage_loss(loss, out.mean, out.cov, target, vis, beta=beta, pseudo_cov=pseudo_cov,
                            pseudo_sqrt=pseudo_sqrt, variance_scale=variance_scale, stats=stats)
    value = per_sample.mean()
    # Per coordinate: the same optimum, and gradient clipping means the same thing for every loss.
    total = value / target.shape[1]
    if heatmap_weight > 0 and out.heatmaps is not None:
        total = total + heatmap_weight * losses.heatmap_cross_entropy(
            out.heatmaps, batch["heatmaps"].to(device, non_blocking=True), vis, model.head.log_beta.exp()).mean()
    return total, float(value.detach())


def stage_loss(loss: str, mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor,
               *, beta: float = 0.5, pseudo_cov: torch.Tensor | None = None, pseudo_sqrt: torch.Tensor | None = None,
               variance_scale: float = 1.0, stats: dict | None = None) -> torch.Tensor:
    """Per-sample value of a stage's loss (see ``pose_toss.config.LOSSES``)."""
    if loss == "mse":
        return losses.mse(mean, target, visibility)
    if loss == "nll":
        return losses.gaussian_nll(mean, cov, target, visibility, stats)
    if loss == "beta_nll":
        return losses.beta_nll(mean, cov, target, visibility, beta)
    if loss == "faithful":
        return losses.faithful(mean, cov, target, visibility, stats)
    if loss == "loss_pred":
        return losses.loss_prediction(mean, cov, target, visibility, variance_scale)
    if loss in ("w2_bound", "kl_calibrated"):
        if pseudo_cov is None:
            raise ValueError(f"loss {loss!r} needs pseudo-labels")
        if loss == "w2_bound":
            return losses.w2_bound(mean, cov, target, mask=visibility, target_sqrt=pseudo_sqrt,
                                   target_cov=pseudo_cov)
        return losses.kl_calibrated(mean, cov, target, pseudo_cov, visibility, stats)
    raise ValueError(f"unknown loss {loss!r}")
