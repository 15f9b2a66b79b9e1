"""Stage objectives: which loss function a stage calls, with what, and pseudo-labels moved into the
batch's frame. Pure functions over tensors; the math itself lives in ``pose_toss.losses``."""

from __future__ import annotations

import torch

from pose_toss import losses
from pose_toss.covariance import linear_map_covariance


def labels_in_batch_frame(cov: torch.Tensor, bank_affine: torch.Tensor, batch_affine: torch.Tensor,
                          flip_coordinate_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move bank pseudo-covariances (stored in the unaugmented crop frame) into an augmented batch.

    Both affines map the original image to a crop, so ``L = A_batch A_bank^-1`` (linear parts) takes
    the bank frame to the batch frame; a mirror (det L < 0) also swaps left and right joints, as the
    data pipeline does. Returns the covariances and their square roots.
    """
    lin = batch_affine[:, :, :2].double() @ torch.linalg.inv(bank_affine[:, :, :2].double())
    moved = linear_map_covariance(cov.double(), lin)
    flipped = torch.linalg.det(lin) < 0
    if flipped.any():
        perm = flip_coordinate_index.to(cov.device)
        moved[flipped] = moved[flipped][:, perm][:, :, perm]
    moved = 0.5 * (moved + moved.transpose(-1, -2))
    return moved.float(), losses.sqrtm_eigh(moved).float()


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
