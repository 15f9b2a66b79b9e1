"""Losses as pure, batched functions returning one value per sample.

Arguments: ``mean`` (B x D), ``cov`` (B x D x D), ``target`` (B x D), ``mask`` (B x J visibility, or
None for all visible), D = 2J in [x0, y0, x1, y1, ...] order. Covariance math runs in float32 even
under autocast. Invisible joints are marginalised out exactly: the covariance becomes
``M cov M + (I - M)`` and the residual ``M r``, which equals working on the visible block alone.
"""

from __future__ import annotations

import math

import torch


def _coord_mask(mask: torch.Tensor | None, mean: torch.Tensor) -> torch.Tensor:
    """B x D float mask, each joint's flag repeated for its x and y."""
    if mask is None:
        return torch.ones_like(mean, dtype=torch.float32)
    if mask.shape[-1] * 2 != mean.shape[-1]:
        raise ValueError(f"mask has {mask.shape[-1]} joints but mean has {mean.shape[-1]} coordinates (expected 2J)")
    return (mask > 0).float().repeat_interleave(2, dim=-1)


def masked_covariance(cov: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``M cov M + (I - M)`` for a B x D coordinate mask: invisible coordinates become independent unit ones."""
    outer = m.unsqueeze(-1) * m.unsqueeze(-2)
    return cov * outer + torch.diag_embed(1.0 - m)


def robust_cholesky(cov: torch.Tensor, max_tries: int = 8, stats: dict | None = None) -> torch.Tensor:
    """Cholesky factor, adding an escalating diagonal jitter to the samples that fail.

    Jitter starts at 1e-6 of the mean diagonal and grows 10x per try. Each sample that needed it is
    counted in ``stats["cholesky_jitter"]``. Non-finite covariances raise rather than turn into NaN.
    """
    if not torch.isfinite(cov).all():
        bad = (~torch.isfinite(cov)).flatten(1).any(1).nonzero().flatten().tolist()
        raise FloatingPointError(f"covariance has non-finite entries in samples {bad}")
    chol, info = torch.linalg.cholesky_ex(cov)
    failed = info > 0
    if not failed.any():
        return chol
    eye = torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-12)
    if stats is not None:
        stats["cholesky_jitter"] = stats.get("cholesky_jitter", 0) + int(failed.sum())
    jitter = 1e-6
    for _ in range(max_tries):
        fixed = cov[failed] + (jitter * scale[failed]).reshape(-1, 1, 1) * eye
        c, inf = torch.linalg.cholesky_ex(fixed)
        chol = chol.clone()
        chol[failed] = c
        still = failed.clone()
        still[failed] = inf > 0
        if not still.any():
            return chol
        failed = still
        jitter *= 10
    raise FloatingPointError(f"covariance not positive definite even with jitter {jitter:g} in samples "
                             f"{failed.nonzero().flatten().tolist()}")


def gaussian_nll(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 stats: dict | None = None) -> torch.Tensor:
    """``1/2 [log det S + r^T S^-1 r + d log 2 pi]`` per sample over the visible coordinates (d of them)."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        mean, cov, target = mean.float(), cov.float(), target.float()
        m = _coord_mask(mask, mean)
        r = (target - mean) * m
        chol = robust_cholesky(masked_covariance(cov, m), stats=stats)
        white = torch.linalg.solve_triangular(chol, r.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * (logdet + (white**2).sum(-1) + m.sum(-1) * math.log(2 * math.pi))


def mse(mean: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of squared errors over the visible coordinates, per sample."""
    m = _coord_mask(mask, mean)
    return (((target.float() - mean.float()) * m) ** 2).sum(-1)
