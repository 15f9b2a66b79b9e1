"""Covariance pseudo-labels from nearest neighbours in an embedding space (ToSS Algorithm 1).

For sample i: squared Mahalanobis distances ``d_ij`` to every other embedding (bank covariance shrunk
towards its diagonal), the k nearest (self excluded), weights ``softmax_j(-d_ij / tau)``, and the
weighted covariance of the neighbours' targets around their weighted mean. Intuition: a target varies
a lot where similar inputs carry different labels.

Beyond the paper, ``centre=False`` with residuals ``y_j - mu_j`` (targets minus the model's predictions)
as the "targets" gives the weighted second moment of the neighbours' errors: an estimate of how wrong
the model is around z rather than of how much the poses around z differ (which is large wherever poses
vary, however sure the model is).

``tau = 1`` is the paper's softmax(-d); ``"median"`` divides by the median neighbour distance, which
spreads the weight over nearly all k neighbours; ``effective_neighbours=n`` sets each sample's own tau so
that its weights count n effective neighbours (``1 / sum_j w_ij^2``), whatever the distances' scale.

Also beyond the paper, ``joint_scaled_labels`` rescales each joint of a label to what that joint's own
neighbours say, found on a per-joint descriptor (what the image shows around the joint), so that an
occluded wrist is compared with occluded wrists rather than with figures in a similar pose.
"""

from __future__ import annotations

import torch


def whiten(embeddings: torch.Tensor, shrinkage: float = 0.1) -> torch.Tensor:
    """Map embeddings so Euclidean distance equals the Mahalanobis distance under the bank's covariance,
    shrunk towards its diagonal (``(1 - a) S + a diag(S)``) so it is invertible."""
    x = embeddings.float()
    bad = ~torch.isfinite(x).all(1)
    if bool(bad.any()):
        raise ValueError(f"embeddings: {int(bad.sum())} of {x.shape[0]} rows hold NaN or Inf (first: row "
                         f"{int(bad.nonzero()[0])}); every embedding must be finite to find neighbours")
    if x.shape[0] < 2:
        raise ValueError(f"embeddings: need at least 2 rows to whiten, got {x.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    diag = torch.diag(torch.diagonal(cov).clamp_min(1e-12))
    shrunk = (1 - shrinkage) * cov + shrinkage * diag
    chol = torch.linalg.cholesky(shrunk.double()).float()
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T


def knn(points: torch.Tensor, k: int, block_size: int | None = None, max_block_elements: int = 1 << 24,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours (squared Euclidean), self excluded -> (distances N x k, indices N x k).

    Queries run in blocks so memory stays at ``block x N`` (never N x N): the distance block is one
    GEMM, then a top-k. Runs on whatever device ``points`` is on.
    """
    n = points.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1}, got {k}")
    block = block_size or max(1, min(n, max_block_elements // n))
    sq = (points * points).sum(-1)
    # Ranking a query's neighbours needs only q.u_j - |u_j|^2 / 2 (its own norm is constant), and that
    # is one plain GEMM with the norms folded in as an extra column: no N-wide broadcast add per block.
    keys = torch.cat([points, -0.5 * sq[:, None]], dim=1)
    dists, idxs = [], []
    for start in range(0, n, block):
        q = points[start:start + block]
        queries = torch.cat([q, torch.ones_like(q[:, :1])], dim=1)
        score = queries @ keys.T
        rows = torch.arange(q.shape[0], device=points.device)
        score[rows, rows + start] = -float("inf")  # not your own neighbour
        val, idx = torch.topk(score, k, dim=1, largest=True, sorted=True)
        dists.append((sq[start:start + block, None] - 2.0 * val).clamp_min_(0))
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def neighbour_weights(dist: torch.Tensor, temperature: float | str | None = 1.0,
                      effective: float | None = None) -> tuple[torch.Tensor, float]:
    """``softmax(-dist / tau)`` over each row of N x k neighbour distances -> (weights, tau).

    ``temperature``: a number (tau itself; 1 is the paper's) or ``"median"`` (tau = the median neighbour
    distance; None means the same, as in configs written before the choice existed). ``effective``: each
    row's own tau for that many effective neighbours instead (``temperature_for_neighbours``; the median tau
    is returned)."""
    if effective is not None:
        tau = temperature_for_neighbours(dist, effective)
        d = dist.double() - dist.double().min(1, keepdim=True).values
        return torch.softmax(-d / tau.unsqueeze(1), dim=1).to(dist.dtype), float(tau.median())
    if temperature is None or temperature == "median":
        tau = float(dist.median().clamp_min(1e-12))
    elif isinstance(temperature, str):
        raise ValueError(f"temperature must be a positive number or 'median', got {temperature!r}")
    else:
        tau = float(temperature)
        if not tau > 0:
            raise ValueError(f"temperature must be a positive number or 'median', got {temperature!r}")
    return torch.softmax(-dist / tau, dim=1), tau


def temperature_for_neighbours(dist: torch.Tensor, target: float, iterations: int = 60) -> torch.Tensor:
    """Each row's temperature (N) at which ``softmax(-dist / tau)`` over its k neighbours counts ``target``
    effective neighbours (between 1 and k): bisection on log tau, the count growing with tau."""
    n, k = dist.shape
    if not 1 <= target <= k:
        raise ValueError(f"effective neighbours must be between 1 and k = {k}, got {target}")
    d = dist.double() - dist.double().min(1, keepdim=True).values  # softmax ignores a row's shift
    scale = d.max(1).values.clamp_min(1e-12)
    lo, hi = (scale * 1e-6).log(), (scale * 1e6).log()
    for _ in range(iterations):
        mid = (lo + hi) / 2
        count = effective_neighbours(torch.softmax(-d / mid.exp().unsqueeze(1), dim=1))
        lo, hi = torch.where(count < target, mid, lo), torch.where(count < target, hi, mid)
    return ((lo + hi) / 2).exp()


def effective_neighbours(weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_j w_ij^2`` per row of N x k weights: k for uniform weights, 1 when one neighbour has all."""
    return 1.0 / (weights.double() ** 2).sum(1)



def pseudo_covariances(embeddings: torch.Tensor, targets: torch.Tensor, k: int = 64,
                       temperature: float | str | None = 1.0, masks: torch.Tensor | None = None,
                       shrinkage: float = 0.1, floor: float = 1e-3, block_size: int | None = None,
                       with_sqrt: bool = True, stats: dict | None = None, centre: bool = True,
                       chunk_size: int = 16384, effective: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pseudo-covariances (N x D x D) and their square roots for every sample of an embedding bank.

    ``embeddings`` N x E, ``targets`` N x D, ``masks`` N x J visibility (D = 2J) or None. ``temperature``
    and ``effective``: see ``neighbour_weights``. ``stats`` (a dict) receives ``temperature`` (the tau used) and
    ``effective_neighbours`` (the mean over samples). Missing joints: each coordinate pair is averaged over
    the neighbours where both are visible (weights renormalised), then the matrix is projected onto
    the positive definite cone. ``floor`` (relative to the mean variance) keeps every label PD.
    ``with_sqrt=False`` skips the roots (None is returned): without masks no eigendecomposition is then
    needed at all, the weighted covariance being PSD by construction. ``centre=False``: second moments
    around zero instead of covariances around the neighbours' weighted mean (for residual targets).
    ``chunk_size``: rows labelled at once (memory and the batched eigh stay bounded; results do not
    depend on it).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if embeddings.shape[0] != targets.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings but {targets.shape[0]} targets")
    dist, idx = knn(whiten(embeddings, shrinkage), k, block_size)
    weights, tau = neighbour_weights(dist, temperature, effective)  # N x k
    if stats is not None:
        stats["temperature"] = tau
        stats["effective_neighbours"] = float(effective_neighbours(weights).mean())
    targets = targets.float().to(embeddings.device)
    masks = None if masks is None else masks.to(embeddings.device)
    if masks is None and not bool(torch.isfinite(targets).all()):
        raise ValueError("targets hold NaN or Inf; pass masks marking those joints invisible")
    n, d = targets.shape
    cov = targets.new_empty(n, d, d)
    root = targets.new_empty(n, d, d) if with_sqrt else None
    # Row chunks bound the N x k x D gathers and the batched eigh (cuSOLVER's batched eigh fails
    # somewhere between 60 000 and 100 000 matrices): any N runs, and every row's label is the same.
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        c, r = _labels(weights[rows], idx[rows], targets, masks, centre, floor, with_sqrt)
        cov[rows] = c
        if with_sqrt:
            root[rows] = r
    return cov, root


def _labels(weights: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None,
            centre: bool, floor: float, with_sqrt: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``pseudo_covariances`` for some rows: their neighbours' weights and indices (n x k) -> labels, roots."""
    y = targets[idx]  # n x k x D
    if masks is None:
        mean = (weights.unsqueeze(-1) * y).sum(1, keepdim=True) if centre else torch.zeros_like(y[:, :1])
        centred = (y - mean) * weights.sqrt().unsqueeze(-1)
        cov = centred.transpose(1, 2) @ centred
    else:
        visible = (masks[idx] > 0).repeat_interleave(2, dim=-1)  # n x k x D
        # Invisible coordinates are selected away, not multiplied by 0: a NaN there must go nowhere.
        y = torch.where(visible, y, 0.0)
        if not bool(torch.isfinite(y).all()):
            raise ValueError("targets hold NaN or Inf at coordinates the masks mark visible")
        m = visible.float()
        wm = weights.unsqueeze(-1) * m
        # per coordinate, over visible neighbours
        mean = (wm * y).sum(1) / wm.sum(1).clamp_min(1e-12) if centre else torch.zeros_like(y[:, 0])
        centred = torch.where(visible, y - mean.unsqueeze(1), 0.0)
        pair_w = torch.einsum("nk,nka,nkb->nab", weights, m, m)
        cov = torch.einsum("nk,nka,nkb->nab", weights, centred, centred) / pair_w.clamp_min(1e-12)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    if masks is None and not with_sqrt:
        eye = torch.eye(cov.shape[-1], device=cov.device)
        return cov + (floor * scale)[:, None, None] * eye, None
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
    evals = evals.clamp_min(0) + floor * scale.unsqueeze(-1)  # PSD projection, then a relative floor
    cov = (evecs * evals.unsqueeze(-2)) @ evecs.transpose(1, 2)
    root = (evecs * evals.sqrt().unsqueeze(-2)) @ evecs.transpose(1, 2) if with_sqrt else None
    return cov, root


def joint_scaled_labels(cov: torch.Tensor, descriptors: torch.Tensor, values: torch.Tensor, k: int,
                        masks: torch.Tensor | None = None, temperature: float | str | None = 1.0,
                        effective: float | None = None, centre: bool = True, shrinkage: float = 0.1,
                        floor: float = 1e-3) -> torch.Tensor:
    """Labels (N x D x D) with each joint's rows and columns rescaled so that its 2 x 2 block's trace is that of
    its own neighbours' second moment, found per joint on ``descriptors`` (N x J x F, what the image shows
    around each joint): ``S cov S``, correlations kept, positive definite as ``cov`` is.

    Joint j of sample i gets ``sum_n w_in |v_nj - c_ij|^2`` over its k nearest neighbours by ``descriptors[:, j]``
    (weights as in ``neighbour_weights``; ``c`` their weighted mean when ``centre``, else 0 as for residuals),
    over the neighbours where the joint is visible."""
    n, j, _ = descriptors.shape
    values = values.float().reshape(n, j, 2).to(descriptors.device)
    visible = torch.ones(n, j, dtype=torch.bool, device=descriptors.device) if masks is None else masks.to(
        descriptors.device) > 0
    traces = torch.empty(n, j, dtype=torch.float64, device=descriptors.device)
    for q in range(j):
        dist, idx = knn(whiten(descriptors[:, q], shrinkage), k)
        w, _ = neighbour_weights(dist, temperature, effective)
        w = torch.where(visible[idx, q], w, 0.0)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        y = torch.where(visible[idx, q].unsqueeze(-1), values[idx, q], 0.0)  # n x k x 2
        mean = (w.unsqueeze(-1) * y).sum(1, keepdim=True) if centre else torch.zeros_like(y[:, :1])
        traces[:, q] = (w * ((y - mean) ** 2).sum(-1)).sum(1).double()
    own = torch.diagonal(cov, dim1=-2, dim2=-1).reshape(n, j, 2).sum(-1).double()
    ratio = (traces / own.clamp_min(1e-12)).clamp(1e-4, 1e4)
    scale = ratio.sqrt().repeat_interleave(2, dim=1).to(cov.dtype).to(cov.device)
    scaled = cov * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    mean_var = torch.diagonal(scaled, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    return scaled + (floor * mean_var)[:, None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
