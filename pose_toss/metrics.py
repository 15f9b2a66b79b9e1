"""Evaluation metrics between Gaussians, batched, in float64 (exactness over speed)."""

from __future__ import annotations

import torch

from pose_toss.losses import sqrtm_eigh


def w2_gaussian(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Exact squared 2-Wasserstein distance between N(mean1, cov1) and N(mean2, cov2), per sample:
    ``|m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``."""
    m1, s1, m2, s2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root2 = sqrtm_eigh(s2)
    cross = sqrtm_eigh(root2 @ s1 @ root2)
    tr = torch.diagonal(s1 + s2 - 2 * cross, dim1=-2, dim2=-1).sum(-1)
    return ((m1 - m2) ** 2).sum(-1) + tr.clamp_min(0)


def kl_gaussian(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, cov1) || N(mean2, cov2)) per sample."""
    m1, s1, m2, s2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    c2 = torch.linalg.cholesky(s2)
    d = m1.shape[-1]
    trace = torch.diagonal(torch.cholesky_solve(s1, c2), dim1=-2, dim2=-1).sum(-1)
    diff = torch.linalg.solve_triangular(c2, (m2 - m1).unsqueeze(-1), upper=False).squeeze(-1)
    logdet2 = 2 * torch.log(torch.diagonal(c2, dim1=-2, dim2=-1)).sum(-1)
    logdet1 = torch.linalg.slogdet(s1)[1]
    return 0.5 * (trace + (diff**2).sum(-1) - d + logdet2 - logdet1)
