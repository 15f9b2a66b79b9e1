"""Losses as pure, batched functions returning one value per sample.

Arguments: ``mean`` (B x D), ``cov`` (B x D x D), ``target`` (B x D), ``mask`` (B x J visibility, or
None for all visible), D = 2J in [x0, y0, x1, y1, ...] order. Covariance math runs in float32 even
under autocast. Invisible joints are marginalised out exactly: the covariance becomes
``M cov M + (I - M)`` and the residual ``M r``, which equals working on the visible block alone. The
masking selects (``torch.where``), never multiplies, so whatever an invisible coordinate holds (a NaN
target, say) never reaches the arithmetic. NaN or Inf where it does count raises
``CovarianceInputError`` (a ValueError, and a FloatingPointError the trainer skips a step on).
"""

from __future__ import annotations

import math

import torch

from pose_toss.covariance import (
    CovarianceInputError,
    at_least_float32,
    masked_covariance,
    require_finite,
    require_symmetric,
)


def _coord_mask(mask: torch.Tensor | None, mean: torch.Tensor) -> torch.Tensor:
    """B x D float mask (float32, or float64 like ``mean``), each joint's flag repeated for its x and y."""
    dtype = torch.promote_types(mean.dtype, torch.float32)
    if mask is None:
        return torch.ones_like(mean, dtype=dtype)
    if mask.shape[-1] * 2 != mean.shape[-1]:
        raise ValueError(f"mask has {mask.shape[-1]} joints but mean has {mean.shape[-1]} coordinates (expected 2J)")
    return (mask > 0).to(dtype).repeat_interleave(2, dim=-1)


def visible_residual(mean: torch.Tensor, target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``target - mean`` on the visible coordinates, 0 elsewhere (selected, not multiplied), at least float32."""
    return torch.where(m > 0, at_least_float32(target) - at_least_float32(mean), 0.0)


def robust_cholesky(cov: torch.Tensor, max_tries: int = 8, stats: dict | None = None,
                    caller: str = "robust_cholesky") -> torch.Tensor:
    """Cholesky factor, adding an escalating diagonal jitter to the samples that fail.

    Jitter starts at 1e-6 of the mean diagonal and grows 10x per try. Each sample that needed it is
    counted in ``stats["cholesky_jitter"]``. Non-finite covariances raise rather than turn into NaN.
    """
    require_finite(caller, covariance=cov)
    chol, info = torch.linalg.cholesky_ex(cov)
    failed = info > 0
    if not failed.any():
        return chol
    # Jitter rescues round-off, never a matrix that is not a covariance (-I would otherwise become 9I).
    evals = torch.linalg.eigvalsh(cov[failed])
    negative = evals[:, 0] < -1e-3 * evals[:, -1].abs().clamp_min(1e-30)
    if bool(negative.any()):
        rows = failed.nonzero().flatten()[negative]
        raise CovarianceInputError(f"{caller}: covariance is not positive semi-definite in samples {rows[:8].tolist()} "
                                   f"(smallest eigenvalue {float(evals[negative][0, 0]):.3g})")
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


def _whitened(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
              stats: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coordinate mask m, Cholesky factor of the masked covariance, whitened residual, log det), at least float32."""
    cov = at_least_float32(cov)
    m = _coord_mask(mask, mean)
    resid = visible_residual(mean, target, m)
    masked = masked_covariance(cov, m)
    require_finite("gaussian likelihood", residual=resid)
    require_symmetric("gaussian likelihood", masked)
    chol = robust_cholesky(masked, stats=stats, caller="gaussian likelihood")
    white = torch.linalg.solve_triangular(chol, resid.to(chol.dtype).unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return m, chol, white, logdet


def gaussian_nll(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 stats: dict | None = None) -> torch.Tensor:
    """``1/2 [log det S + r^T S^-1 r + d log 2 pi]`` per sample over the visible coordinates (d of them)."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m, _, white, logdet = _whitened(mean, cov, target, mask, stats)
        return 0.5 * (logdet + (white**2).sum(-1) + m.sum(-1) * math.log(2 * math.pi))


def mse(mean: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of squared errors over the visible coordinates, per sample."""
    resid = visible_residual(mean, target, _coord_mask(mask, mean))
    require_finite("mse", residual=resid)
    return (resid**2).sum(-1)


def beta_nll(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
             beta: float = 0.5) -> torch.Tensor:
    """beta-NLL on the diagonal: each coordinate's Gaussian NLL weighted by stop-grad(variance)^beta."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m = _coord_mask(mask, mean)
        visible = m > 0
        var = torch.where(visible, torch.diagonal(at_least_float32(cov), dim1=-2, dim2=-1), 1.0)
        r2 = visible_residual(mean, target, m) ** 2
        require_finite("beta_nll", residual=r2, variance=var)
        if bool((var <= 0).any()):
            raise CovarianceInputError("beta_nll: variances must be positive at visible coordinates")
        per = 0.5 * (torch.log(var) + r2 / var + math.log(2 * math.pi))
        return torch.where(visible, per * var.detach() ** beta, 0.0).sum(-1)


def faithful(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
             stats: dict | None = None) -> torch.Tensor:
    """Faithful heteroscedastic regression: MSE trains the mean, the NLL of the detached residual the covariance."""
    return mse(mean, target, mask) + gaussian_nll(mean.detach(), cov, target, mask, stats)


def kl_calibrated(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, prior_cov: torch.Tensor,
                  mask: torch.Tensor | None = None, stats: dict | None = None) -> torch.Tensor:
    """``1/2 tr(S^-1 P) + 1/2 r^T S^-1 r + log det S`` (ToSS Lemma 1, calibrated).

    Each label becomes N(y, P); doubling the log-determinant's weight moves the optimum from P + truth
    to (P + truth) / 2, so the prior regularises and equals the truth when P is right.
    """
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m, chol, white, logdet = _whitened(mean, cov, target, mask, stats)
        prior = masked_covariance(prior_cov.to(chol.dtype), m.to(chol.dtype))
        require_finite("kl_calibrated", prior_cov=prior)
        prior_white = torch.cholesky_solve(prior, chol)  # S^-1 P
        trace = torch.diagonal(prior_white, dim1=-2, dim2=-1).sum(-1) - (1.0 - m).sum(-1)  # padding adds 1 each
        return 0.5 * trace + 0.5 * (white**2).sum(-1) + logdet


def sqrtm_newton_schulz(mat: torch.Tensor, iters: int = 30, tol: float = 1e-6) -> torch.Tensor:
    """Differentiable square root of SPD matrices (B x D x D) by coupled Newton-Schulz iterations.

    The matrix is divided by its trace (eigenvalues in (0, 1]), iterated
    ``T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z`` (Y -> A^1/2, Z -> A^-1/2), and scaled back by sqrt(trace).
    No eigendecomposition, so gradients stay stable. Converged samples stop changing; the loop ends
    early once every sample's update is below ``tol``.
    """
    with torch.autocast(device_type=mat.device.type, enabled=False):
        mat = at_least_float32(mat)
        d = mat.shape[-1]
        norm = torch.diagonal(mat, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-20).reshape(-1, 1, 1)
        eye = torch.eye(d, device=mat.device, dtype=mat.dtype).expand_as(mat)
        y, z = mat / norm, eye
        for _ in range(iters):
            t = 0.5 * (3.0 * eye - z @ y)
            y_next, z = y @ t, t @ z
            done = (y_next - y).abs().amax() < tol
            y = y_next
            if done:
                break
        return y * norm.sqrt()


def w2_bound(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, target_cov: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, target_sqrt: torch.Tensor | None = None) -> torch.Tensor:
    """ToSS's 2-Wasserstein upper bound ``|mu - y|^2 + |S^1/2 - S~^1/2|_F^2`` per sample.

    The prediction's root is taken by Newton-Schulz (differentiable); the target's root needs no
    gradient and may be given precomputed (``target_sqrt``, of the full target covariance). Invisible
    coordinates are padded with identity blocks on both sides, which contribute zero.
    """
    if target_cov is None and target_sqrt is None:
        raise ValueError("w2_bound needs target_cov or target_sqrt")
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m = _coord_mask(mask, mean)
        cov = masked_covariance(at_least_float32(cov), m)
        robust_cholesky(cov, caller="w2_bound")  # NaN / Inf or not a covariance: refused by name
        pred_root = sqrtm_newton_schulz(cov)
        with torch.no_grad():
            target_root = masked_sqrtm(target_cov, m, target_sqrt).to(pred_root.dtype)
            require_finite("w2_bound", target_covariance=target_root)
        return mse(mean, target, mask).to(pred_root.dtype) + ((pred_root - target_root) ** 2).sum((-2, -1))


def masked_sqrtm(cov: torch.Tensor | None, m: torch.Tensor, root: torch.Tensor | None = None) -> torch.Tensor:
    """The root of ``M cov M + (I - M)``: the visible block's own root, padded with identity.

    That is not the visible block of the full root when visible and invisible coordinates are
    correlated, so a precomputed ``root`` (of the full ``cov``) serves only the samples with every
    coordinate visible; the others are taken from ``cov`` by eigendecomposition (no gradient).
    """
    if root is None and cov is None:
        raise ValueError("masked_sqrtm needs the covariance or its root")
    partial = (m <= 0).any(-1)
    if root is not None and not partial.any():
        return root
    if cov is None:
        raise ValueError(f"{int(partial.sum())} samples have invisible coordinates: the root of their visible block "
                         "needs the covariance itself, not the root of the full matrix")
    if root is None:
        cov = at_least_float32(cov)
        return sqrtm_eigh(masked_covariance(cov, m.to(cov.dtype)))
    out = at_least_float32(root).clone()
    out[partial] = sqrtm_eigh(masked_covariance(cov[partial].to(out.dtype), m[partial].to(out.dtype)))
    return out


def sqrtm_eigh(mat: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root by eigendecomposition (no gradient needed: targets, metrics)."""
    evals, evecs = torch.linalg.eigh(0.5 * (mat + mat.transpose(-1, -2)))
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def loss_prediction(mean: torch.Tensor, cov: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                    scale: float = 1.0) -> torch.Tensor:
    """The loss-prediction baseline: MSE for the mean, and each joint's predicted variance regressed
    onto its detached squared error / 2 (an isotropic 2-D Gaussian has E|r|^2 = 2 v).

    The variance term is a Huber loss in units of ``scale`` px^2, so rare huge errors cannot swamp the
    gradient norm. ``cov`` is read through its diagonal (x variance of each joint).
    """
    with torch.autocast(device_type=mean.device.type, enabled=False):
        coords = _coord_mask(mask, mean)
        m = coords[:, ::2] > 0
        var = torch.diagonal(at_least_float32(cov), dim1=-2, dim2=-1)[:, ::2]
        sq = (visible_residual(mean, target, coords) ** 2).reshape(mean.shape[0], -1, 2).sum(-1).detach()
        var = torch.where(m, var, 0.0)  # invisible joints' variances go nowhere
        require_finite("loss_prediction", variance=var)
        fit = torch.nn.functional.huber_loss(var / scale, 0.5 * sq / scale, reduction="none")
        return mse(mean, target, mask) + torch.where(m, fit, 0.0).sum(-1)


def heatmap_cross_entropy(logits: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor,
                          beta: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Cross-entropy between each target heatmap, normalised to a distribution, and the softmax of
    ``beta x logits`` that the soft-argmax takes its expectation over, averaged over the visible
    joints, per sample. It teaches where the peak is with a signal at every pixel (DSNT-style
    regularisation), consistently with the soft-argmax mean; a plain MSE to unit-peak Gaussians would
    fight the softmax instead."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        flat = logits.float().flatten(-2)
        log_p = torch.log_softmax(beta * flat, dim=-1)
        t = target.float().flatten(-2)
        t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
        ce = -(t * log_p).sum(-1)
        m = (visibility > 0).float() * (target.flatten(-2).sum(-1) > 0).float()
        return (ce * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def occlusion_bce(logits: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each joint's occlusion logit (B x J) against its flag (B x J: 1 hidden, 0 seen,
    negative unknown), averaged over the known joints, per sample (0 where none is known)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        known = flags >= 0
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), flags.clamp(0, 1).float(),
                                                                   reduction="none")
        return torch.where(known, bce, 0.0).sum(-1) / known.sum(-1).clamp_min(1)
