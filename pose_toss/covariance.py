"""Covariance math as pure functions: batched Jacobians of a decoder, TIC assembly, parameterisations.

Shapes: B samples, D = 2J output coordinates ([x0, y0, x1, y1, ...]), E embedding dims.
Everything here takes tensors and returns tensors; none of it holds state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.func import jacfwd, jacrev, vjp, vmap


def _per_sample(decode_fn: Callable) -> Callable:
    """``decode_fn`` on one sample: unbatched inputs in, a flat D vector out (for vmap)."""
    def f(z: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        out = decode_fn(z.unsqueeze(0), *(a.unsqueeze(0) for a in args))
        return out.reshape(-1)

    return f


def jacobian(decode_fn: Callable[..., torch.Tensor], z: torch.Tensor, *args: torch.Tensor,
             chunk_size: int | None = None, mode: str = "batched") -> torch.Tensor:
    """Batched Jacobian ``d decode_fn(z, *args) / d z`` -> B x D x E, with torch.func.

    ``decode_fn`` maps a batch (B x E, then B x ... per extra argument) to B x D.

    ``mode``:
      - ``"batched"`` (default): samples are independent (an eval-mode decoder), so one batched
        ``torch.func.vjp`` is taken and its pullback is applied to the D one-hot cotangents, ``chunk_size``
        at a time (vmapped) or one at a time (``chunk_size=None``: fastest on CPU, where vmap over
        convolution backward is slow). No loop over samples.
      - ``"reverse"`` / ``"forward"``: per-sample ``vmap(jacrev)`` / ``vmap(jacfwd)``; ``"auto"`` picks
        reverse when D <= E (fewer passes). These make no independence assumption.
    The result is detached: TIC uses J as a fixed basis, no gradient flows through it. J is covariance
    math: it is taken in at least float32 with autocast off (a bf16 J is several per cent off), so
    half-precision inputs are promoted and float64 ones kept.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be B x E, got shape {tuple(z.shape)}")
    for i, a in enumerate(args):
        if a.shape[0] != z.shape[0]:
            raise ValueError(f"argument {i} has batch size {a.shape[0]}, expected {z.shape[0]} like z")
    z = at_least_float32(z.detach())
    args = tuple(at_least_float32(a.detach()) for a in args)
    with torch.enable_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        if mode == "batched":
            return _batched_reverse_jacobian(decode_fn, z, args, chunk_size)
        f = _per_sample(decode_fn)
        if mode == "auto":
            with torch.no_grad():
                d = decode_fn(z[:1], *(a[:1] for a in args)).numel()
            mode = "reverse" if d <= z.shape[1] else "forward"
        if mode == "reverse":
            jac_fn = jacrev(f, argnums=0, chunk_size=chunk_size)
        elif mode == "forward":
            jac_fn = jacfwd(f, argnums=0)
        else:
            raise ValueError(f"mode must be 'batched', 'auto', 'reverse' or 'forward', got {mode!r}")
        in_dims = (0,) * (1 + len(args))
        jac = vmap(jac_fn, in_dims=in_dims, chunk_size=None if mode == "reverse" else chunk_size)(z, *args)
    return jac.detach()


class CovarianceInputError(FloatingPointError, ValueError):
    """Covariance math given NaN / Inf, or a matrix that is not a covariance. A ValueError for callers, and
    a FloatingPointError so a training step that meets one (a diverging model) is skipped, not the run."""


def require_finite(fn: str, **tensors: torch.Tensor | None) -> None:
    """Raise ``CovarianceInputError`` naming each argument (and its first samples) that holds NaN or Inf.
    One device sync for all of them."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    flags = torch.stack([torch.isfinite(v).all() for _, v in items])
    if bool(flags.all()):
        return
    parts = []
    for (name, v), ok in zip(items, flags.tolist(), strict=True):
        if not ok:
            rows = (~torch.isfinite(v)).reshape(v.shape[0], -1).any(1).nonzero().flatten() if v.dim() else None
            parts.append(name + ("" if rows is None else f" (samples {rows[:8].tolist()}"
                                 + (", ..." if len(rows) > 8 else "") + ")"))
    raise CovarianceInputError(f"{fn}: NaN or Inf in {'; '.join(parts)}")


def require_symmetric(fn: str, cov: torch.Tensor, rtol: float = 1e-4) -> None:
    """Raise ``CovarianceInputError`` for B x D x D matrices that are not symmetric within ``rtol``."""
    gap = (cov - cov.transpose(-1, -2)).abs().amax((-2, -1))
    bad = gap > rtol * cov.abs().amax((-2, -1)).clamp_min(1e-30)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise CovarianceInputError(f"{fn}: covariance is not symmetric in samples {rows[:8].tolist()} "
                                   f"(largest |S - S^T| {float(gap.max()):.3g})")


def masked_covariance(cov: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``M cov M + (I - M)`` for a (B x) D coordinate mask: unmasked coordinates become independent unit ones
    (their entries are replaced, so a NaN there goes nowhere). Conditioning, marginalising and the
    losses all use it to work on a block of a covariance in one batched shape."""
    outer = (m.unsqueeze(-1) > 0) & (m.unsqueeze(-2) > 0)
    return torch.where(outer, cov, 0.0) + torch.diag_embed(1.0 - m.to(cov.dtype))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Covariance math's precision: half precision is promoted to float32, float64 kept, integers left alone."""
    return t.to(torch.promote_types(t.dtype, torch.float32)) if t.is_floating_point() else t


def _batched_reverse_jacobian(decode_fn: Callable, z: torch.Tensor, args: tuple, chunk_size: int | None):
    out, pullback = vjp(lambda zz: decode_fn(zz, *args), z)
    b, d = out.shape
    eye = torch.eye(d, device=out.device, dtype=out.dtype)
    if chunk_size is None:  # one reverse pass per output coordinate, each over the whole batch
        rows = [pullback(eye[k].expand(b, d))[0] for k in range(d)]
        return torch.stack(rows, dim=1).detach()
    rows = []
    for start in range(0, d, chunk_size):
        basis = eye[start:start + chunk_size].unsqueeze(1).expand(-1, b, d)
        rows.append(vmap(pullback)(basis)[0].transpose(0, 1))
    return torch.cat(rows, dim=1).detach()


def interpolation_matrix(grid: int, height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The (H W) x (grid^2) matrix of ``F.interpolate(..., mode="bilinear", align_corners=False)`` from a
    grid x grid map to H x W (a linear map, read off by interpolating the unit maps); a grid of 1 is the
    broadcast of one value, a column of ones."""
    if grid == 1:
        return torch.ones(height * width, 1, dtype=dtype, device=device)
    basis = torch.eye(grid * grid, dtype=dtype, device=device).reshape(grid * grid, 1, grid, grid)
    maps = torch.nn.functional.interpolate(basis, size=(height, width), mode="bilinear", align_corners=False)
    return maps.reshape(grid * grid, height * width).T


def heatmap_tail_jacobian(z: torch.Tensor, context: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor,
                          grid: int, final_weight: torch.Tensor, final_bias: torch.Tensor, beta: torch.Tensor,
                          stride: int, relu: bool = True) -> torch.Tensor:
    """Closed-form J = d mean / d z (B x 2J x E) of the heatmap head's tail with z entering at its last
    layer: ``mean = soft-argmax(beta * (W relu(context + R (U z + b)) + c))``.

    Shapes: ``z`` B x E, ``context`` B x C x H x W, ``up_weight`` U (C g^2) x E and ``up_bias`` b (the
    bottleneck's up-projection, rows ordered channel then grid cell), ``final_weight`` J x C (x 1 x 1),
    ``final_bias`` J, R the bilinear resize from g x g to H x W (``interpolation_matrix``). With p_j the
    softmax over joint j's pixels and x_i a pixel's centre in input pixels, the chain rule gives

        J_j = sum_i beta p_ji (x_i - mean_j) sum_c W_jc 1[pre_ci > 0] sum_k R_ik U_(c,k)

    which is evaluated as one batched GEMM over pixels (a_j ⊗ R^T against the ReLU mask), a scaling by W
    and one GEMM with U: no autograd, no loop over outputs. ``relu=False``: a tail without its ReLU
    (a head with no deconvolution). At least float32; float64 kept.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(z.dtype, context.dtype), torch.float32)
        z, context = z.detach().to(dtype), context.detach().to(dtype)
        u_w, u_b = up_weight.detach().to(dtype), up_bias.detach().to(dtype)
        w = final_weight.detach().to(dtype).reshape(final_weight.shape[0], -1)  # J x C
        c_b, beta = final_bias.detach().to(dtype), beta.detach().to(dtype)
        b, c, h, wd = context.shape
        nj = w.shape[0]
        resize = interpolation_matrix(grid, h, wd, dtype, z.device)  # HW x g^2
        offset = ((z @ u_w.T + u_b).reshape(b, c, grid * grid) @ resize.T)  # B x C x HW
        pre = context.reshape(b, c, h * wd) + offset
        act = torch.relu(pre) if relu else pre
        heat = torch.einsum("jc,bci->bji", w, act) + c_b[:, None]
        prob = torch.softmax(beta * heat, dim=-1)  # B x J x HW
        centre = (stride - 1) / 2.0
        xs = torch.arange(wd, device=z.device, dtype=dtype) * stride + centre
        ys = torch.arange(h, device=z.device, dtype=dtype) * stride + centre
        pos = torch.stack([xs.repeat(h), ys.repeat_interleave(wd)], dim=-1)  # HW x 2, row-major pixels
        mean = prob @ pos  # B x J x 2
        # a[b, j, xy, i] = beta p_ji (x_i - mean_j): d mean_j / d heat_ji
        a = beta * prob.unsqueeze(2) * (pos.T.unsqueeze(0).unsqueeze(0) - mean.unsqueeze(-1))  # B x J x 2 x HW
        mask = (pre > 0).to(dtype) if relu else torch.ones_like(pre)  # B x C x HW
        # sum_i a_ji R_ik mask_ci -> B x (J 2 g^2) x C, one batched GEMM over pixels
        ar = (a.unsqueeze(3) * resize.T.reshape(1, 1, 1, grid * grid, h * wd)).reshape(b, nj * 2 * grid * grid,
                                                                                       h * wd)
        through = (ar @ mask.transpose(1, 2)).reshape(b, nj, 2, grid * grid, c)
        through = through * w.reshape(1, nj, 1, 1, c)  # W_jc
        # order (c, k) like U's rows, then J = (...) U
        g_ck = through.permute(0, 1, 2, 4, 3).reshape(b, nj * 2, c * grid * grid)
        return g_ck @ u_w


def regression_tail_jacobian(z: torch.Tensor, context: torch.Tensor, up_weight: torch.Tensor, up_bias: torch.Tensor,
                             out_weight: torch.Tensor, scale: float) -> torch.Tensor:
    """Closed-form J (B x 2J x E) of the regression head's tail with z at its hidden layer:
    ``mean = scale (W relu(context + U z + b) + c) + const``, so J = scale W diag(1[pre > 0]) U."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(z.dtype, context.dtype), torch.float32)
        u_w = up_weight.detach().to(dtype)
        pre = context.detach().to(dtype) + z.detach().to(dtype) @ u_w.T + up_bias.detach().to(dtype)
        mask = (pre > 0).to(dtype)  # B x H
        return scale * (out_weight.detach().to(dtype).unsqueeze(0) * mask.unsqueeze(1)) @ u_w


def hessian_gram(decode_fn: Callable[..., torch.Tensor], z: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """``H~_ab = tr(H_a H_b)`` with H_a the E x E Hessian of output a w.r.t. z -> B x D x D (costly)."""
    z = at_least_float32(z.detach())
    args = tuple(at_least_float32(a.detach()) for a in args)
    f = _per_sample(decode_fn)
    with torch.enable_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        hess = vmap(jacfwd(jacrev(f, argnums=0), argnums=0))(z, *args)  # B x D x E x E
    return torch.einsum("bdij,beij->bde", hess, hess).detach()


def tic_covariance(jac: torch.Tensor, eps1: torch.Tensor, chol: torch.Tensor, eps2: torch.Tensor | None = None,
                   hess_gram: torch.Tensor | None = None, floor: float = 1e-3, check: bool = True) -> torch.Tensor:
    """TIC: ``eps1^2 J J^T + eps2^2 H~ + L L^T + floor I`` (B x D x D), in at least float32 whatever autocast
    says (float64 inputs stay float64). ``check``: inputs so large that the result overflows (or NaN inputs) are a
    ``CovarianceInputError`` naming the samples, not an Inf covariance (one device sync; the model's forward
    passes False so it stays capturable as a CUDA graph and exportable, and its losses check instead)."""
    cov = _tic_covariance(jac, eps1, chol, eps2, hess_gram, floor)
    if check:
        _require_finite_result("tic_covariance", cov, jac=jac, eps1=eps1, chol=chol)
    return cov


def _require_finite_result(fn: str, cov: torch.Tensor, **inputs: torch.Tensor) -> None:
    """A covariance that came out NaN or Inf: say whether the inputs were, or the arithmetic overflowed."""
    if bool(torch.isfinite(cov).all()):
        return
    require_finite(fn, **inputs)
    rows = (~torch.isfinite(cov)).flatten(1).any(1).nonzero().flatten()
    raise CovarianceInputError(f"{fn}: the covariance overflows {cov.dtype} in samples {rows[:8].tolist()}: its "
                               "inputs are too large (pass float64, or bring them to a sane scale)")


def _tic_covariance(jac, eps1, chol, eps2, hess_gram, floor):
    with torch.autocast(device_type=jac.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(jac.dtype, chol.dtype), torch.float32)
        jac, chol, eps1 = jac.to(dtype), chol.to(dtype), eps1.to(dtype)
        cov = eps1.reshape(-1, 1, 1) ** 2 * (jac @ jac.transpose(-1, -2)) + chol @ chol.transpose(-1, -2)
        if hess_gram is not None:
            if eps2 is None:
                raise ValueError("a Hessian term needs eps2")
            cov = cov + eps2.to(dtype).reshape(-1, 1, 1) ** 2 * hess_gram.to(dtype)
        return symmetrise_with_floor(cov, floor)


def rms_scale(jac: torch.Tensor) -> torch.Tensor:
    """``sqrt(tr(J J^T) / D)`` per sample for B x D x E Jacobians (detached, bounded away from 0): the RMS
    standard deviation per output that ``J J^T`` alone would give."""
    return ((jac.detach() ** 2).sum((-2, -1)) / jac.shape[-2]).sqrt().clamp_min(1e-12)


def trace_scale(psd: torch.Tensor) -> torch.Tensor:
    """``sqrt(tr(M) / D)`` per sample for B x D x D PSD matrices (detached, bounded away from 0)."""
    return (torch.diagonal(psd.detach(), dim1=-2, dim2=-1).sum(-1) / psd.shape[-1]).clamp_min(1e-24).sqrt()


def taylor_share(jac: torch.Tensor, eps1: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``tr(eps1^2 J J^T) / tr(cov)`` per sample: how much of a TIC covariance the Jacobian carries."""
    taylor = eps1.detach().double() ** 2 * (jac.double() ** 2).sum((-2, -1))
    return taylor / torch.diagonal(cov.detach().double(), dim1=-2, dim2=-1).sum(-1)


def taylor_diagnostics(jac: torch.Tensor, eps1: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the Taylor share (``taylor_share``, B) and J's singular values (B x min(D, E), descending),
    float64 — what ``metrics.tic_summary`` reduces over a set of samples."""
    return taylor_share(jac, eps1, cov), torch.linalg.svdvals(jac.detach().double())


def cholesky_from_vector(vec: torch.Tensor, dim: int, floor: float = 1e-3) -> torch.Tensor:
    """Lower-triangular factor with a positive diagonal from B x dim(dim+1)/2 unconstrained values (at least
    float32). Placed by a constant 0/1 matrix and masked with the identity rather than indexed in place, so
    the same function exports to ONNX."""
    vec = at_least_float32(vec)
    rows, cols = torch.tril_indices(dim, dim, device=vec.device)
    # A comparison, not an indexed write of a Python scalar: that would copy from the CPU, which a CUDA graph
    # capture refuses.
    place = ((rows * dim + cols)[:, None] == torch.arange(dim * dim, device=vec.device)).to(vec.dtype)
    low = (vec @ place).reshape(vec.shape[0], dim, dim)
    eye = torch.eye(dim, dtype=vec.dtype, device=vec.device)
    diag = torch.nn.functional.softplus((low * eye).sum(-1)) + floor**0.5
    return low * (1.0 - eye) + eye * diag.unsqueeze(-1)


def full_covariance(vec: torch.Tensor, dim: int, floor: float = 1e-3, scale: float = 1.0, check: bool = True
                    ) -> torch.Tensor:
    """``scale^2 L L^T + floor I`` with L from ``cholesky_from_vector(vec)``; ``check`` as in ``tic_covariance``."""
    low = cholesky_from_vector(vec, dim, 0.0) * scale
    cov = symmetrise_with_floor(low @ low.transpose(-1, -2), floor)
    if check:
        _require_finite_result("full_covariance", cov, vec=vec)
    return cov


def diagonal_covariance(raw: torch.Tensor, floor: float = 1e-3, scale: float = 1.0) -> torch.Tensor:
    """``diag(scale * softplus(raw)) + floor I`` (the identity masked, so it exports to ONNX)."""
    var = torch.nn.functional.softplus(at_least_float32(raw)) * scale + floor
    return torch.eye(var.shape[-1], dtype=var.dtype, device=var.device) * var.unsqueeze(-1)


def heatmap_moments(prob: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (..., J, 2) and covariance (..., J, 2, 2) of each heatmap distribution (..., J, H, W), in input
    pixels at the pixel centres the soft-argmax uses: how widely a joint's own heatmap spreads."""
    h, w = prob.shape[-2:]
    offset = (stride - 1) / 2.0
    xs = torch.arange(w, device=prob.device, dtype=prob.dtype) * stride + offset
    ys = torch.arange(h, device=prob.device, dtype=prob.dtype) * stride + offset
    px, py = prob.sum(-2), prob.sum(-1)  # marginals over x and y
    mx, my = (px * xs).sum(-1), (py * ys).sum(-1)
    dx, dy = xs - mx.unsqueeze(-1), ys - my.unsqueeze(-1)
    vxx, vyy = (px * dx**2).sum(-1), (py * dy**2).sum(-1)
    vxy = (prob * dy.unsqueeze(-1) * dx.unsqueeze(-2)).sum((-2, -1))
    cov = torch.stack([torch.stack([vxx, vxy], -1), torch.stack([vxy, vyy], -1)], -2)
    return torch.stack([mx, my], -1), cov


def joint_patches(images: torch.Tensor, joints: torch.Tensor, patch: int, window: float) -> torch.Tensor:
    """Square crops of ``images`` (B x C x S x S) around each joint (B x J x 2, input pixels), ``window`` of the
    image side wide, resampled bilinearly to ``patch`` x ``patch`` (zeros outside the image) -> (B J) x C x
    patch x patch, in joint order. One ``grid_sample`` per image over the joints' patches stacked."""
    b, c, h, w = images.shape
    j = joints.shape[1]
    # grid_sample's normalised coordinates with align_corners=False: -1 and 1 are the outer pixel edges.
    centre = torch.stack([(2 * joints[..., 0] + 1) / w - 1, (2 * joints[..., 1] + 1) / h - 1], -1)  # B x J x 2
    steps = (torch.arange(patch, dtype=images.dtype, device=images.device) + 0.5) / patch * 2 - 1  # in (-1, 1)
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1) * window  # P x P x 2 (x, y)
    grid = centre[:, :, None, None, :] + offsets  # B x J x P x P x 2
    out = torch.nn.functional.grid_sample(images, grid.reshape(b, j * patch, patch, 2), mode="bilinear",
                                          padding_mode="zeros", align_corners=False)  # B x C x (J P) x P
    return out.reshape(b, c, j, patch, patch).transpose(1, 2).reshape(b * j, c, patch, patch)


def scale_joints(cov: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``S cov S`` with ``S = diag(exp(log_scale))`` repeated over each joint's two coordinates: every joint's
    spread times its scale, correlations kept (B x D x D, log_scale B x J)."""
    s = torch.exp(log_scale.to(cov.dtype))
    s = torch.stack([s, s], dim=-1).flatten(-2)  # each joint's scale on its x and y (repeat_interleave, in ONNX)
    return cov * s.unsqueeze(-1) * s.unsqueeze(-2)


def transform_joints(cov: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """The local term applied to a covariance (B x D x D): ``local`` B x J is each joint's log-scale
    (``scale_joints``); B x J x 3 is (log sx, log sy, shear) of a per-joint lower-triangular map
    ``T_j = [[exp(a), 0], [c, exp(b)]]``, applied as ``T cov T^T`` with T block-diagonal (PSD kept, correlations
    carried along; zeros give the covariance unchanged)."""
    if local.dim() == 2:
        return scale_joints(cov, local)
    local = local.to(cov.dtype)
    b, j = local.shape[:2]
    sx, sy, shear = local[..., 0].exp(), local[..., 1].exp(), local[..., 2]
    zero = torch.zeros_like(sx)
    t = torch.stack([torch.stack([sx, zero], -1), torch.stack([shear, sy], -1)], -2)  # B x J x 2 x 2
    blocks = cov.reshape(b, j, 2, j, 2)
    out = torch.einsum("bipr,birks,bkqs->bipkq", t, blocks, t).reshape(b, 2 * j, 2 * j)
    return 0.5 * (out + out.transpose(-1, -2))


def transform_joint_rows(matrix: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``T @ matrix`` for B x D x K matrices whose rows are the joints' coordinates, T the block-diagonal local term
    of ``transform_joints`` (``local`` B x J log-scales or B x J x 3 maps): a factor ``F`` of a covariance becomes the
    factor ``T F`` of the transformed one, ``T F F^T T^T``."""
    local = local.to(matrix.dtype)
    if local.dim() == 2:
        s = torch.exp(local).repeat_interleave(2, dim=-1)
        return matrix * s.unsqueeze(-1)
    b, j = local.shape[:2]
    sx, sy, shear = local[..., 0].exp(), local[..., 1].exp(), local[..., 2]
    zero = torch.zeros_like(sx)
    t = torch.stack([torch.stack([sx, zero], -1), torch.stack([shear, sy], -1)], -2)  # B x J x 2 x 2
    return torch.einsum("bipr,birk->bipk", t, matrix.reshape(b, j, 2, -1)).reshape(matrix.shape)


def symmetrise_with_floor(cov: torch.Tensor, floor: float) -> torch.Tensor:
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    return cov + floor * torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)


def linear_map_covariance(cov: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """``(I (x) L) cov (I (x) L)^T`` for B x D x D covariances and per-sample 2 x 2 maps L (B x 2 x 2):
    the covariance of the joints after every joint was moved by the same linear map."""
    b, d, _ = cov.shape
    blocks = cov.reshape(b, d // 2, 2, d // 2, 2)
    return torch.einsum("bij,bpjqk,blk->bpiql", linear, blocks, linear).reshape(b, d, d)


def condition_gaussian(mean: torch.Tensor, cov: torch.Tensor, observed: torch.Tensor,
                       values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition N(mean, cov) on the coordinates flagged in ``observed`` taking ``values``.

    ``mean``, ``values``: B x D; ``cov``: B x D x D; ``observed``: B x D booleans (any pattern per
    sample). Returns the conditional mean (observed entries set to their values) and covariance
    (observed rows and columns zero): ``mu_a + S_ab S_bb^-1 (v_b - mu_b)`` and ``S_aa - S_ab S_bb^-1 S_ba``.
    Unobserved coordinates are padded into S_bb as independent unit variables, so one batched
    Cholesky solve serves every pattern.
    """
    with torch.autocast(device_type=mean.device.type, enabled=False):
        dtype = torch.promote_types(cov.dtype, torch.float32)
        mean, cov, values = mean.to(dtype), cov.to(dtype), values.to(dtype)
        obs = observed.bool()
        require_finite("condition_gaussian", mean=mean, cov=cov, values=torch.where(obs, values, 0.0))
        require_symmetric("condition_gaussian", cov)
        o = obs.to(dtype)
        u = 1.0 - o
        s_bb = masked_covariance(cov, o)
        s_ab = cov * (u.unsqueeze(-1) * o.unsqueeze(-2))  # rows: unobserved, columns: observed
        chol, info = torch.linalg.cholesky_ex(s_bb)
        if bool((info > 0).any()):
            raise CovarianceInputError(f"condition_gaussian: the observed joints' covariance is not positive "
                                       f"definite in samples {(info > 0).nonzero().flatten()[:8].tolist()}")
        resid = torch.where(obs, values - mean, 0.0).unsqueeze(-1)
        gain_resid = s_ab @ torch.cholesky_solve(resid, chol)
        cond_mean = torch.where(obs, values, mean + gain_resid.squeeze(-1))
        cond_cov = cov * (u.unsqueeze(-1) * u.unsqueeze(-2)) - s_ab @ torch.cholesky_solve(s_ab.transpose(-1, -2), chol)
        return cond_mean, 0.5 * (cond_cov + cond_cov.transpose(-1, -2))


def condition(mean, cov, observed: dict) -> tuple:
    """Gaussian conditioning of one pose on joints fixed by a user or another sensor.

    ``mean``: D = 2J (``[x0, y0, x1, y1, ...]``), ``cov``: D x D, ``observed``: ``{joint index: (x, y)}``.
    Returns the conditional mean (D, observed joints set to their values) and covariance (D x D, the
    observed joints' rows and columns zero), as numpy arrays for numpy input and tensors otherwise.
    This is the operation TAC scores, offered as a feature: fix a joint and the rest of the pose moves.
    """
    as_numpy = not torch.is_tensor(mean)
    m = torch.as_tensor(np.asarray(mean) if as_numpy else mean, dtype=torch.float64).reshape(-1)
    c = torch.as_tensor(np.asarray(cov) if as_numpy else cov, dtype=torch.float64)
    d = m.shape[0]
    if d % 2 or c.shape != (d, d):
        raise ValueError(f"expected a mean of 2J entries and a 2J x 2J covariance, got {tuple(m.shape)} and "
                         f"{tuple(c.shape)}")
    mask = torch.zeros(d, dtype=torch.bool)
    values = m.clone()
    for joint, xy in observed.items():
        j = int(joint)
        if not 0 <= j < d // 2:
            raise ValueError(f"observed joint {joint} is out of range for {d // 2} joints")
        try:
            point = torch.as_tensor(np.asarray(xy, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError(f"observed joint {joint}: expected an (x, y) pair of numbers, got {xy!r}") from None
        if point.shape != (2,):
            raise ValueError(f"observed joint {joint}: expected an (x, y) pair, got {xy!r}")
        mask[2 * j: 2 * j + 2] = True
        values[2 * j: 2 * j + 2] = point
    cond_mean, cond_cov = condition_gaussian(m[None], c[None], mask[None], values[None])
    cond_mean, cond_cov = cond_mean[0], cond_cov[0]
    if as_numpy:
        return cond_mean.numpy(), cond_cov.numpy()
    return cond_mean.to(mean.dtype), cond_cov.to(mean.dtype)


def joint_correlations(cov: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Canonical correlation between joints: the largest correlation any pair of linear combinations of
    joint a's (x, y) and joint b's (x, y) reaches, in [0, 1]. ``cov``: ... x 2J x 2J. All pairs (... x J x J,
    diagonal 1), or only the joint pairs ``(a[l], b[l])`` (index tensors of length L: ... x L).

    It is the top singular value of ``S_aa^-1/2 S_ab S_bb^-1/2``.
    """
    with torch.autocast(device_type=cov.device.type, enabled=False):
        c = cov.to(torch.promote_types(cov.dtype, torch.float32))
        j = c.shape[-1] // 2
        blocks = c.reshape(*c.shape[:-2], j, 2, j, 2).transpose(-3, -2)  # ... x J x J x 2 x 2
        diag = torch.diagonal(blocks, dim1=-4, dim2=-3).movedim(-1, -3)  # ... x J x 2 x 2
        evals, evecs = torch.linalg.eigh(diag)
        inv_sqrt = evecs @ torch.diag_embed(evals.clamp_min(1e-12).rsqrt()) @ evecs.transpose(-1, -2)
        if a is None:
            whitened = inv_sqrt.unsqueeze(-3) @ blocks @ inv_sqrt.unsqueeze(-4)
        else:
            whitened = inv_sqrt[..., a, :, :] @ blocks[..., a, b, :, :] @ inv_sqrt[..., b, :, :]
        return torch.linalg.matrix_norm(whitened, ord=2).clamp(0.0, 1.0)


def unmirror(mean: torch.Tensor, cov: torch.Tensor, flip_coords: torch.Tensor,
             width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A prediction made on the horizontally mirrored crop, mapped back to the crop's frame.

    Mirroring is ``x -> width - 1 - x`` with left and right joints swapped (``flip_coords``: the
    permutation of the 2J coordinates): every joint moves by the same map ``diag(-1, 1)``.
    ``mean``: B x 2J, ``cov``: B x 2J x 2J.
    """
    require_finite("unmirror", mean=mean, cov=cov)
    idx = flip_coords.to(mean.device)
    back = mean[:, idx]  # advanced indexing copies
    back[:, 0::2] = (width - 1) - back[:, 0::2]
    mirror = torch.diag(torch.tensor([-1.0, 1.0], dtype=cov.dtype, device=cov.device)).expand(cov.shape[0], 2, 2)
    return back, linear_map_covariance(cov[:, idx][:, :, idx], mirror)


def equal_mixture(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor,
                  cov_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the 50/50 mixture of two Gaussians (moment matching): the covariance is
    the average of the two plus the spread of their means, ``d d^T / 4`` with ``d = mean_a - mean_b``."""
    require_finite("equal_mixture", mean_a=mean_a, cov_a=cov_a, mean_b=mean_b, cov_b=cov_b)
    # mixture_moments for two members, in the closed form that rounds least (the flip test's hot path)
    d = (mean_a - mean_b).unsqueeze(-1)
    return 0.5 * (mean_a + mean_b), 0.5 * (cov_a + cov_b) + 0.25 * d @ d.transpose(-1, -2)


def mixture_moments(means: torch.Tensor, covs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the equal-weight mixture of K Gaussians stacked on the first dimension (means
    K x ... x D, covs K x ... x D x D), by moment matching: the mean of the covariances plus the covariance of
    the means (the law of total covariance). An ensemble's members merged into one Gaussian."""
    require_finite("mixture_moments", means=means, covs=covs)
    mean = means.mean(0)
    spread = means - mean
    return mean, covs.mean(0) + (spread.unsqueeze(-1) * spread.unsqueeze(-2)).mean(0)
