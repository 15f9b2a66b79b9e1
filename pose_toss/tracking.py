"""Smoothing a person's joints over video frames with each frame's full predicted covariance.

A constant-velocity Kalman filter and Rauch-Tung-Striebel smoother over the D = 2J coordinates: the state
is the D positions and their D velocities, frame t measures the positions with noise N(0, R_t), R_t the
model's predicted covariance for that frame (off-diagonal terms included, so a joint the model ties to
another moves with it). Coordinates a frame does not see (an invisible joint) contribute nothing: the
update uses the inverse of the observed block of R_t, padded with zeros, in information form, which is
exactly conditioning on the observed coordinates alone. The process noise is white acceleration of
variance q per coordinate (px^2 / frame^3); ``fit_process_noise`` picks q by the innovations' likelihood.

Pure functions on float64 tensors: ``means`` T x D, ``covs`` T x D x D, ``observed`` T x D booleans.
"""

from __future__ import annotations

import math

import torch

from pose_toss.covariance import masked_covariance


def constant_velocity(dim: int, q: float, dt: float = 1.0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, Q) of the constant-velocity model over ``dim`` coordinates: state [positions, velocities]."""
    eye = torch.eye(dim, dtype=dtype)
    zero = torch.zeros(dim, dim, dtype=dtype)
    f = torch.cat([torch.cat([eye, dt * eye], 1), torch.cat([zero, eye], 1)], 0)
    q_block = torch.tensor([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dtype=dtype)
    return f, q * torch.kron(q_block, eye)


def _observed_information(cov: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The inverse of the observed block of ``cov``, padded with zeros (D x D)."""
    outer = observed.unsqueeze(-1) & observed.unsqueeze(-2)
    return torch.where(outer, torch.linalg.inv(masked_covariance(cov, observed.to(cov.dtype))), 0.0)


def kalman_filter(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None, q: float = 1.0,
                  init_var: float = 1e6) -> dict:
    """Filtered states (T x 2D), their covariances (T x 2D x 2D), the one-step predictions and the log
    likelihood of the measurements (the innovations'). The first state is diffuse: variance ``init_var``."""
    means, covs = means.double(), covs.double()
    t_len, d = means.shape
    observed = torch.ones(t_len, d, dtype=torch.bool) if observed is None else observed.bool()
    if not bool(torch.isfinite(torch.where(observed, means, 0.0)).all()):
        raise ValueError("observed coordinates must be finite (mark missing ones unobserved)")
    f, q_mat = constant_velocity(d, q)
    h = torch.cat([torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)], 1)
    x = torch.zeros(2 * d, dtype=torch.float64)
    p = init_var * torch.eye(2 * d, dtype=torch.float64)
    xs, ps, x_pred, p_pred = [], [], [], []
    loglik = 0.0
    for t in range(t_len):
        if t > 0:
            x, p = f @ x, f @ p @ f.T + q_mat
        x_pred.append(x)
        p_pred.append(p)
        obs = observed[t]
        y = torch.where(obs, means[t], 0.0)
        if obs.any():
            # The innovation's likelihood over the observed coordinates (for fitting q).
            k = int(obs.sum())
            idx = obs.nonzero().flatten()
            s = (h @ p @ h.T)[idx][:, idx] + covs[t][idx][:, idx]
            r = (y - h @ x)[idx]
            chol = torch.linalg.cholesky(0.5 * (s + s.T))
            white = torch.linalg.solve_triangular(chol, r.unsqueeze(-1), upper=False).squeeze(-1)
            loglik -= 0.5 * (float(white @ white) + 2 * float(torch.log(torch.diagonal(chol)).sum())
                             + k * math.log(2 * math.pi))
            info = _observed_information(covs[t], obs)
            p_inv = torch.linalg.inv(p)
            p = torch.linalg.inv(p_inv + h.T @ info @ h)
            x = p @ (p_inv @ x + h.T @ info @ y)
            p = 0.5 * (p + p.T)
        xs.append(x)
        ps.append(p)
    return {"x": torch.stack(xs), "p": torch.stack(ps), "x_pred": torch.stack(x_pred), "p_pred": torch.stack(p_pred),
            "loglik": loglik, "f": f}


def rts_smoother(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None, q: float = 1.0,
                 init_var: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed positions (T x D) and their covariances (T x D x D): every frame's estimate given the whole
    sequence (the Kalman filter forward, Rauch-Tung-Striebel backward)."""
    run = kalman_filter(means, covs, observed, q, init_var)
    f, x, p = run["f"], run["x"].clone(), run["p"].clone()
    for t in range(len(x) - 2, -1, -1):
        gain = p[t] @ f.T @ torch.linalg.inv(run["p_pred"][t + 1])
        x[t] = x[t] + gain @ (x[t + 1] - run["x_pred"][t + 1])
        p[t] = p[t] + gain @ (p[t + 1] - run["p_pred"][t + 1]) @ gain.T
        p[t] = 0.5 * (p[t] + p[t].T)
    d = means.shape[1]
    return x[:, :d], p[:, :d, :d]


def fit_process_noise(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None,
                      grid: torch.Tensor | None = None) -> float:
    """The q (on a log grid, by default 1e-4 to 1e4 times the median measured variance) that maximises the
    filter's innovation likelihood: how fast the joints move, read off the sequence itself."""
    if grid is None:
        scale = float(torch.diagonal(covs.double(), dim1=-2, dim2=-1).median())
        grid = scale * torch.logspace(-4, 4, 33, dtype=torch.float64)
    scores = [kalman_filter(means, covs, observed, float(q))["loglik"] for q in grid]
    return float(grid[int(torch.tensor(scores).argmax())])


def smooth_results(results: list[dict], q: float | None = None, source: str = "predictions") -> list[dict]:
    """COCO keypoint results with covariances (``pose-toss eval`` / ``visualize`` output) smoothed over
    frames: one track per ``track_id`` (all results one track when none has it), frames ordered by a
    ``frame`` field, else by ``image_id``. Each result's keypoints and covariance are replaced by the
    smoothed ones (the keypoints' third values kept), and ``process_noise`` says the q used (fitted per
    track unless given). A null coordinate is an unobserved one."""
    tracks: dict = {}
    for n, r in enumerate(results):
        for key in ("keypoints", "covariance"):
            if key not in r:
                raise ValueError(f"{source}: result {n} has no {key!r} (expected pose-toss COCO results with "
                                 "covariances)")
        tracks.setdefault(r.get("track_id"), []).append(n)
    out = [dict(r) for r in results]
    for track_id, members in tracks.items():
        frame_of = [results[n].get("frame", results[n].get("image_id")) for n in members]
        if len(set(frame_of)) != len(frame_of):
            raise ValueError(f"{source}: track {track_id!r} has several people in one frame; give each person a "
                             "'track_id'")
        order = [m for _, m in sorted(zip(frame_of, members, strict=True), key=lambda p: p[0])]
        kps = [[float("nan") if v is None else float(v) for v in results[n]["keypoints"]] for n in order]
        triplets = torch.tensor(kps, dtype=torch.float64).reshape(len(order), -1, 3)
        means = triplets[..., :2].reshape(len(order), -1)
        covs = torch.tensor([results[n]["covariance"] for n in order], dtype=torch.float64)
        d = means.shape[1]
        if covs.shape[1:] != (d, d):
            raise ValueError(f"{source}: track {track_id!r}: covariances of shape {tuple(covs.shape[1:])} for "
                             f"{d} coordinates")
        observed = torch.isfinite(means) & torch.isfinite(torch.diagonal(covs, dim1=-2, dim2=-1))
        covs = torch.where(torch.isfinite(covs), covs, 0.0)
        q_used = fit_process_noise(means, covs, observed) if q is None else float(q)
        smoothed, smoothed_cov = rts_smoother(means, covs, observed, q_used)
        for row, n in enumerate(order):
            xy = smoothed[row].reshape(-1, 2)
            out[n]["keypoints"] = [round(float(v), 3) for v in
                                   torch.cat([xy, triplets[row, :, 2:].nan_to_num(0.0)], 1).reshape(-1)]
            out[n]["covariance"] = [[round(float(v), 4) for v in line] for line in smoothed_cov[row]]
            out[n]["process_noise"] = q_used
    return out
