"""Smoothing a person's joints over video frames with each frame's full predicted covariance.

A constant-velocity Kalman filter and Rauch-Tung-Striebel smoother over the D = 2J coordinates: the state
is the D positions and their D velocities, frame t measures the positions with noise N(0, alpha R_t), R_t the
model's predicted covariance for that frame (off-diagonal terms included, so a joint the model ties to
another moves with it). Coordinates a frame does not see (an invisible joint) contribute nothing: the
update conditions on the observed block of the innovation alone (its covariance padded with an identity,
its residual with zeros). The process noise is white acceleration of variance q per coordinate
(px^2 / frame^3).

Two numbers are read off each track by the innovations' likelihood (``fit_noise``): q, how fast the joints
move, and alpha, how far the predicted covariances are from the spread the measurements actually have around
the motion. Fitting q alone against a covariance that is too wide pushes q down and over-smooths; the scale
is fitted with it, from the sequence itself, never from the truth.

Every step is a batched function of (G, ...) tensors, G candidate (alpha, q) pairs: the fit runs all of a
grid's candidates in one pass, and the offline filter, the online filter (``OnlineSmoother``) and the fit
share the same two step functions, so they agree bit for bit.

Shapes: ``means`` T x D, ``covs`` T x D x D, ``observed`` T x D booleans; float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2

from pose_toss.coco_results import coco_result, default_sigmas

LOG_2PI = math.log(2 * math.pi)


def constant_velocity(dim: int, q: float | torch.Tensor = 1.0, dt: float = 1.0, dtype=torch.float64
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, Q) of the constant-velocity model over ``dim`` coordinates: state [positions, velocities]. A tensor
    ``q`` (G) gives G process-noise matrices (G x 2D x 2D)."""
    eye = torch.eye(dim, dtype=dtype)
    zero = torch.zeros(dim, dim, dtype=dtype)
    f = torch.cat([torch.cat([eye, dt * eye], 1), torch.cat([zero, eye], 1)], 0)
    q_block = torch.kron(torch.tensor([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dtype=dtype), eye)
    q = torch.as_tensor(q, dtype=dtype)
    return f, q[..., None, None] * q_block


def predict_step(x: torch.Tensor, p: torch.Tensor, f: torch.Tensor, q_mat: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of motion: (G x 2D, G x 2D x 2D) -> the predicted state and covariance."""
    return x @ f.T, f @ p @ f.T + q_mat


def update_step(x: torch.Tensor, p: torch.Tensor, measurement: torch.Tensor, noise: torch.Tensor,
                observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Condition the state on one frame's measured positions (D) with measurement noise ``noise`` (G x D x D),
    over the ``observed`` coordinates only -> (x, p, the innovation's log likelihood G).

    The innovation covariance S = P_pp + noise is replaced by ``M S M + (I - M)`` and the residual by ``M r``
    (M the observed mask): its Cholesky factor, its determinant and the gain then see only the observed block,
    which is exactly conditioning on those coordinates."""
    d = measurement.shape[-1]
    every = bool(observed.all())
    m = observed.to(x.dtype)
    s = p[..., :d, :d] + noise
    r = measurement - x[..., :d]
    if not every:
        s = torch.where((m[:, None] * m[None, :]) > 0, s, 0.0) + torch.diag(1.0 - m)
        r = torch.where(observed, r, 0.0)
    chol = torch.linalg.cholesky(s)
    white = torch.linalg.solve_triangular(chol, r.unsqueeze(-1), upper=False).squeeze(-1)
    loglik = -0.5 * ((white**2).sum(-1) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                     + float(m.sum()) * LOG_2PI)
    cross = p[..., :, :d] if every else p[..., :, :d] * m  # P H^T, the unobserved columns zeroed
    gain = torch.cholesky_solve(cross.transpose(-1, -2), chol).transpose(-1, -2)  # G x 2D x D
    x = x + (gain @ r.unsqueeze(-1)).squeeze(-1)
    p = p - gain @ cross.transpose(-1, -2)
    return x, 0.5 * (p + p.transpose(-1, -2)), loglik


def initial_state(dim: int, batch: int = 1, init_var: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """A diffuse first state: zero positions and velocities with variance ``init_var``."""
    return (torch.zeros(batch, 2 * dim, dtype=torch.float64),
            init_var * torch.eye(2 * dim, dtype=torch.float64).expand(batch, 2 * dim, 2 * dim).clone())


def _checked(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means, covs = means.double(), covs.double()
    t_len, d = means.shape
    observed = torch.ones(t_len, d, dtype=torch.bool) if observed is None else observed.bool()
    if not bool(torch.isfinite(torch.where(observed, means, 0.0)).all()):
        raise ValueError("observed coordinates must be finite (mark missing ones unobserved)")
    outer = observed.unsqueeze(-1) & observed.unsqueeze(-2)
    if not bool(torch.isfinite(torch.where(outer, covs, 0.0)).all()):
        raise ValueError("the covariance of observed coordinates must be finite (mark missing ones unobserved)")
    return means, torch.where(outer, covs, 0.0), observed


def kalman_filter(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None,
                  q: float | torch.Tensor = 1.0, alpha: float | torch.Tensor = 1.0, init_var: float = 1e6,
                  keep_states: bool = True) -> dict:
    """Filtered states (G x T x 2D), their covariances (G x T x 2D x 2D), the one-step predictions and each
    candidate's log likelihood of the measurements (G, the innovations'), for G = the broadcast size of ``q``
    and ``alpha`` (scalars: G = 1). The measurement noise of frame t is ``alpha covs[t]``. ``keep_states=False``
    returns the likelihood alone (what a fit needs; no T x G x 2D x 2D stack is kept)."""
    means, covs, observed = _checked(means, covs, observed)
    d = means.shape[1]
    q, alpha = torch.broadcast_tensors(torch.as_tensor(q, dtype=torch.float64).reshape(-1),
                                       torch.as_tensor(alpha, dtype=torch.float64).reshape(-1))
    f, q_mat = constant_velocity(d, q)
    x, p = initial_state(d, len(q), init_var)
    xs, ps, x_pred, p_pred = [], [], [], []
    loglik = torch.zeros(len(q), dtype=torch.float64)
    for t in range(len(means)):
        if t > 0:
            x, p = predict_step(x, p, f, q_mat)
        if keep_states:
            x_pred.append(x)
            p_pred.append(p)
        if observed[t].any():
            x, p, ll = update_step(x, p, means[t], alpha[:, None, None] * covs[t], observed[t])
            loglik = loglik + ll
        if keep_states:
            xs.append(x)
            ps.append(p)
    if not keep_states:
        return {"loglik": loglik}
    return {"x": torch.stack(xs, 1), "p": torch.stack(ps, 1), "x_pred": torch.stack(x_pred, 1),
            "p_pred": torch.stack(p_pred, 1), "loglik": loglik, "f": f}


def smooth_step(x: torch.Tensor, p: torch.Tensor, x_next_pred: torch.Tensor, p_next_pred: torch.Tensor,
                x_next: torch.Tensor, p_next: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Rauch-Tung-Striebel step back: frame t's filtered state and the next frame's prediction and smoothed
    state -> frame t's smoothed state."""
    return smooth_with_gain(x, p, x_next_pred, p_next_pred, x_next, p_next, smoother_gain(p, p_next_pred, f))


def smoother_gain(p: torch.Tensor, p_next_pred: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The RTS gain P_t F^T P_pred(t+1)^-1: fixed once frame t + 1 is predicted, so an online smoother computes
    it once per frame, however long its lag."""
    return torch.linalg.solve(p_next_pred, f @ p).transpose(-1, -2)


def smooth_with_gain(x: torch.Tensor, p: torch.Tensor, x_next_pred: torch.Tensor, p_next_pred: torch.Tensor,
                     x_next: torch.Tensor, p_next: torch.Tensor, gain: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One RTS step back with the gain given (``smoother_gain``)."""
    x = x + (gain @ (x_next - x_next_pred).unsqueeze(-1)).squeeze(-1)
    p = p + gain @ (p_next - p_next_pred) @ gain.transpose(-1, -2)
    return x, 0.5 * (p + p.transpose(-1, -2))


def rts_smoother(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None, q: float = 1.0,
                 alpha: float = 1.0, init_var: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed positions (T x D) and their covariances (T x D x D): every frame's estimate given the whole
    sequence (the Kalman filter forward, Rauch-Tung-Striebel backward), measurement noise ``alpha covs``."""
    run = kalman_filter(means, covs, observed, q, alpha, init_var)
    x, p = _backward(run["x"][0], run["p"][0], run["x_pred"][0], run["p_pred"][0], run["f"])
    d = means.shape[1]
    return x[:, :d], p[:, :d, :d]


def _backward(xs: torch.Tensor, ps: torch.Tensor, x_pred: torch.Tensor, p_pred: torch.Tensor, f: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """RTS over a window of filtered states (T x 2D ...), newest last: the smoothed states."""
    x, p = list(xs), list(ps)
    for t in range(len(x) - 2, -1, -1):
        x[t], p[t] = smooth_step(x[t], p[t], x_pred[t + 1], p_pred[t + 1], x[t + 1], p[t + 1], f)
    return torch.stack(x), torch.stack(p)


@dataclass
class NoiseFit:
    """What ``fit_noise`` found for a track: the measurement-covariance scale alpha, the process noise q, and
    the innovation log likelihood there."""

    alpha: float
    q: float
    loglik: float


def fit_noise(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None,
              alpha: float | None = None, q: float | None = None, rounds: int = 4) -> NoiseFit:
    """alpha and q that maximise the filter's innovation likelihood, by a grid in (log alpha, log q) refined
    ``rounds`` times around the best point, each grid one batched filter pass. A given value is kept fixed.

    The first grid (7 x 9) spans alpha from 1e-3 to 10 and q from 1e-4 to 1e4 times the median measured variance;
    each refinement (5 x 5) spans one step of the previous grid on either side of its best point."""
    means, covs, observed = _checked(means, covs, observed)
    diag = torch.diagonal(covs, dim1=-2, dim2=-1)[observed]
    scale = float(diag.median()) if diag.numel() else 1.0
    log_a = (torch.linspace(math.log(1e-3), math.log(10.0), 7, dtype=torch.float64) if alpha is None
             else torch.tensor([math.log(alpha)], dtype=torch.float64))
    log_q = (math.log(scale) + torch.linspace(math.log(1e-4), math.log(1e4), 9, dtype=torch.float64) if q is None
             else torch.tensor([math.log(q)], dtype=torch.float64))
    def loglik(grid_a: torch.Tensor, grid_q: torch.Tensor) -> torch.Tensor:
        ll = kalman_filter(means, covs, observed, grid_q.exp().reshape(-1), grid_a.exp().reshape(-1),
                           keep_states=False)["loglik"]
        return torch.where(torch.isfinite(ll), ll, -math.inf)

    best, grid = None, None
    for _ in range(rounds):
        grid = torch.meshgrid(log_a, log_q, indexing="ij")
        ll = loglik(*grid)
        k = int(ll.argmax())
        best = NoiseFit(float(grid[0].reshape(-1)[k].exp()), float(grid[1].reshape(-1)[k].exp()), float(ll[k]))
        log_a = _finer(log_a, math.log(best.alpha), 5)
        log_q = _finer(log_q, math.log(best.q), 5)
    # A last step: the maximum of the quadratic through the final grid's likelihoods, kept if it is better.
    peak = _quadratic_peak(grid[0].reshape(-1), grid[1].reshape(-1), ll)
    if peak is not None:
        value = float(loglik(peak[0:1], peak[1:2])[0])
        if value > best.loglik:
            best = NoiseFit(float(peak[0].exp()), float(peak[1].exp()), value)
    return best


def _quadratic_peak(a: torch.Tensor, q: torch.Tensor, ll: torch.Tensor) -> torch.Tensor | None:
    """The maximum of the least-squares quadratic in (a, q) through finite values ``ll``, clipped to the box
    the points span; None when the surface has no maximum (or too few points)."""
    ok = torch.isfinite(ll)
    if int(ok.sum()) < 6 or len(torch.unique(a)) < 3 or len(torch.unique(q)) < 3:
        return None
    a0, q0 = a[ok], q[ok]
    design = torch.stack([torch.ones_like(a0), a0, q0, a0 * a0, a0 * q0, q0 * q0], 1)
    c = torch.linalg.lstsq(design, ll[ok].unsqueeze(1)).solution.squeeze(1)
    hessian = torch.tensor([[2 * c[3], c[4]], [c[4], 2 * c[5]]], dtype=ll.dtype)
    if not bool((torch.linalg.eigvalsh(hessian) < 0).all()):
        return None
    peak = torch.linalg.solve(hessian, -c[1:3])
    return torch.stack([peak[0].clamp(a.min(), a.max()), peak[1].clamp(q.min(), q.max())])


def _finer(axis: torch.Tensor, centre: float, points: int) -> torch.Tensor:
    """A grid of ``points`` around ``centre`` one step of ``axis`` wide on each side (or the fixed value)."""
    if len(axis) == 1:
        return axis
    step = float(axis[1] - axis[0])
    return centre + torch.linspace(-step, step, points, dtype=torch.float64)


def fit_process_noise(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None) -> float:
    """q alone, the measurement covariances taken as they are (alpha = 1)."""
    return fit_noise(means, covs, observed, alpha=1.0).q


class OnlineSmoother:
    """A causal filter for one track, one frame at a time, with an optional fixed lag.

    ``step(mean, cov, observed)`` takes a frame's predicted positions (D) and covariance (D x D) and returns
    the estimates it can give now, as (frame, positions, covariance) tuples: with ``lag`` 0 the filtered
    estimate of this frame, with ``lag`` L the estimate of frame t - L given frames up to t (empty for the
    first L frames). ``flush()`` returns the frames still held, smoothed on everything seen. Its forward pass
    is ``kalman_filter``'s, step for step; with a lag of at least the sequence's length, ``flush`` gives
    ``rts_smoother``'s estimates. alpha and q are given, or fitted on a warm-up window (``from_warmup``)."""

    def __init__(self, dim: int, alpha: float, q: float, lag: int = 0, init_var: float = 1e6) -> None:
        if not (math.isfinite(alpha) and alpha > 0 and math.isfinite(q) and q > 0):
            raise ValueError(f"alpha and q must be finite and > 0, got {alpha} and {q}")
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.dim, self.alpha, self.q, self.lag = dim, float(alpha), float(q), int(lag)
        self.f, self.q_mat = constant_velocity(dim, torch.tensor([self.q], dtype=torch.float64))
        self.x, self.p = initial_state(dim, 1, init_var)
        self.frame = 0
        self.window: list[list] = []  # [frame, x, p, x_pred, p_pred, RTS gain] of the frames not yet given out

    @classmethod
    def from_warmup(cls, means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor | None = None,
                    lag: int = 0, alpha: float | None = None, q: float | None = None) -> tuple[OnlineSmoother, list]:
        """alpha and q fitted on the warm-up frames (a given one kept), which are then fed through; returns the
        smoother and what it gave out for them."""
        fit = fit_noise(means, covs, observed, alpha, q)
        smoother = cls(means.shape[1], fit.alpha, fit.q, lag)
        observed = torch.ones_like(means, dtype=torch.bool) if observed is None else observed
        out = [e for t in range(len(means)) for e in smoother.step(means[t], covs[t], observed[t])]
        return smoother, out

    def step(self, mean: torch.Tensor, cov: torch.Tensor, observed: torch.Tensor | None = None) -> list:
        mean, cov = mean.double().reshape(1, -1), cov.double().reshape(1, self.dim, self.dim)
        mean, cov, observed = _checked(mean, cov, None if observed is None else observed.reshape(1, -1))
        if self.frame > 0:
            self.x, self.p = predict_step(self.x, self.p, self.f, self.q_mat)
        x_pred, p_pred = self.x, self.p
        if observed[0].any():
            self.x, self.p, _ = update_step(self.x, self.p, mean[0], self.alpha * cov, observed[0])
        if self.lag and self.window:  # the previous frame's RTS gain is fixed now: computed once, kept
            self.window[-1][5] = smoother_gain(self.window[-1][2], p_pred[0], self.f)
        self.window.append([self.frame, self.x[0], self.p[0], x_pred[0], p_pred[0], None])
        self.frame += 1
        if len(self.window) <= self.lag:
            return []
        estimate = self._smoothed(len(self.window) - 1 - self.lag)[0]
        self.window.pop(0)
        return [estimate]

    def flush(self) -> list:
        """The held frames' estimates given every frame seen, oldest first; the window is emptied."""
        out = self._smoothed(0) if self.window else []
        self.window = []
        return out

    def _smoothed(self, index: int) -> list:
        """(frame, positions, covariance) of the window's frames from ``index`` on, given the whole window: RTS
        backwards from the newest frame with each frame's kept gain."""
        w = self.window
        x, p = w[-1][1], w[-1][2]
        out = [(w[-1][0], x, p)]
        for n in range(len(w) - 2, index - 1, -1):
            x, p = smooth_with_gain(w[n][1], w[n][2], w[n + 1][3], w[n + 1][4], x, p, w[n][5])
            out.append((w[n][0], x, p))
        return [(frame, x[:self.dim], p[:self.dim, :self.dim]) for frame, x, p in reversed(out)]


def smooth_results(results: list[dict], q: float | None = None, source: str = "predictions",
                   alpha: float | None = None, sigmas=None, online_lag: int | None = None,
                   warmup: int = 10) -> list[dict]:
    """COCO keypoint results with covariances (``pose-toss eval`` / ``visualize`` output) smoothed over
    frames: one track per ``track_id`` (all results one track when none has it), frames ordered by a
    ``frame`` field, else by ``image_id``. Each result's keypoints and covariance are replaced by the
    smoothed ones, with each keypoint's score and the person's score recomputed from the smoothed covariance
    (expected keypoint similarities, as ``eval`` scores them); ``measurement_scale`` and ``process_noise``
    say the alpha and q used (fitted per track unless given). A null coordinate is an unobserved one.
    ``sigmas``: the joints' OKS constants for the scores (default: the skeleton's for 14, 16 or 17 joints).
    ``online_lag``: None smooths each track offline (RTS on the whole track, alpha and q fitted on it); a lag L
    runs the causal ``OnlineSmoother`` instead, each frame estimated from the frames up to L after it, alpha
    and q given or fitted on the track's first ``warmup`` frames, as a stream would be."""

    tracks: dict = {}
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a list of COCO keypoint results, got {type(results).__name__}")
    for n, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{source}: result {n} is a {type(r).__name__}, expected an object with 'keypoints' "
                             "and 'covariance'")
        for key in ("keypoints", "covariance"):
            if key not in r:
                raise ValueError(f"{source}: result {n} has no {key!r} (expected pose-toss COCO results with "
                                 "covariances)")
        tracks.setdefault(_hashable(r.get("track_id"), source, n, "track_id"), []).append(n)
    out = [dict(r) for r in results]
    for track_id, members in tracks.items():
        order = _frame_order(results, members, track_id, source)
        means, covs = _track_arrays(results, order, source)
        d = means.shape[1]
        if sigmas is None:
            try:
                sigmas = default_sigmas(d // 2)
            except ValueError:
                raise ValueError(f"{source}: results with {d // 2} joints have no default OKS sigmas to score the "
                                 "smoothed keypoints with; give them (--sigmas)") from None
        if len(sigmas) != d // 2:
            raise ValueError(f"{source}: {len(sigmas)} OKS sigmas for results with {d // 2} joints")
        observed = torch.isfinite(means)
        outliers = outlier_coordinates(means, covs, observed)
        observed &= ~outliers
        covs = covs + COVARIANCE_FLOOR * torch.eye(d, dtype=torch.float64)
        if online_lag is None:
            fit = fit_noise(means, covs, observed, alpha, q)
            smoothed, smoothed_cov = rts_smoother(means, covs, observed, fit.q, fit.alpha)
        else:
            fit, smoothed, smoothed_cov = _online(means, covs, observed, alpha, q, online_lag, warmup)
        for row, n in enumerate(order):
            rescored = coco_result(smoothed[row].reshape(-1, 2).numpy(), smoothed_cov[row].numpy(),
                                   results[n].get("image_id"), results[n].get("category_id", 1),
                                   results[n].get("area"), sigmas)
            out[n].update({k: rescored[k] for k in ("keypoints", "score", "covariance")})
            out[n]["measurement_scale"], out[n]["process_noise"] = fit.alpha, fit.q
            skipped = torch.nonzero(outliers[row].reshape(-1, 2).any(dim=1)).reshape(-1).tolist()
            if skipped:
                out[n]["outlier_joints"] = skipped  # measured far from where the track says; not used
    return out


# Added to every measurement covariance (px², a standard deviation of 0.03 px): a covariance of 1e-30 I is
# positive definite but not a pixel's uncertainty, and against the filter's 1e6 px² start it loses the
# positive definiteness of the updated state to round-off.
COVARIANCE_FLOOR = 1e-3
# A coordinate is an outlier when it sits this many robust spreads from its neighbours' median (see below).
OUTLIER_SPREADS = 12.0


def _hashable(value, source: str, n: int, key: str):
    if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{source}: result {n}: {key!r} must be an integer or a string, got {value!r}")


def _frame_order(results: list[dict], members: list[int], track_id, source: str) -> list[int]:
    """The track's results in frame order (``frame``, else ``image_id``), refusing mixed or repeated frames."""
    frames = [_hashable(results[n].get("frame", results[n].get("image_id")), source, n, "frame") for n in members]
    if None in frames:
        raise ValueError(f"{source}: result {members[frames.index(None)]} has neither 'frame' nor 'image_id': "
                         "its place in the video is unknown")
    if len({type(f) for f in frames}) > 1:
        raise ValueError(f"{source}: track {track_id!r} mixes numbers and strings as frames ({frames[:4]} ...); "
                         "give every result a number 'frame'")
    if len(set(frames)) != len(frames):
        raise ValueError(f"{source}: track {track_id!r} has several people in one frame; give each person a "
                         "'track_id'")
    return [m for _, m in sorted(zip(frames, members, strict=True), key=lambda p: p[0])]


def _number(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError
    return float(v)


def _track_arrays(results: list[dict], order: list[int], source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (T x D, NaN where null) and covariances (T x D x D) of one track, each result's keypoints and
    covariance checked: numbers, one length for all, and a symmetric positive semi-definite covariance that is
    finite where the keypoints are given."""
    first = results[order[0]]["keypoints"]
    length = len(first) if isinstance(first, list) else -1
    means, covs = [], []
    for n in order:
        r, where = results[n], f"{source}: result {n} (image_id {results[n].get('image_id')!r})"
        kps, cov = r["keypoints"], r["covariance"]
        if not isinstance(kps, list) or len(kps) != length or length % 3 or length == 0:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise ValueError(f"{where}: 'keypoints' must be a list of 3J numbers like the track's first ({length}), "
                             f"got {got}")
        try:
            triplets = np.array([_number(v) for v in kps]).reshape(-1, 3)
            d = 2 * len(triplets)
            if not isinstance(cov, list) or len(cov) != d or any(not isinstance(row, list) or len(row) != d
                                                                  for row in cov):
                raise ValueError(f"{where}: 'covariance' must be {d} x {d} numbers for {d // 2} joints")
            matrix = np.array([[_number(v) for v in row] for row in cov])
        except TypeError:
            raise ValueError(f"{where}: 'keypoints' and 'covariance' must hold numbers (or null)") from None
        xy = triplets[:, :2].reshape(-1)
        given = np.isfinite(xy)
        block = matrix[np.ix_(given, given)]
        if not np.isfinite(block).all():
            raise ValueError(f"{where}: the covariance holds NaN or infinity for coordinates whose keypoints are "
                             "given")
        scale = max(float(np.abs(block).max()) if block.size else 0.0, 1e-300)
        if block.size and float(np.abs(block - block.T).max()) > 1e-6 * scale:
            raise ValueError(f"{where}: the covariance is not symmetric (largest |C - C^T| "
                             f"{float(np.abs(block - block.T).max()):.3g} against entries up to {scale:.3g})")
        low = float(np.linalg.eigvalsh(0.5 * (block + block.T))[0]) if block.size else 0.0
        if block.size and (low < -1e-9 * scale or not (block.diagonal() > 0).all()):
            raise ValueError(f"{where}: the covariance is not positive semi-definite with a positive diagonal "
                             f"(smallest eigenvalue {low:.3g}); a covariance of pixels must be")
        means.append(xy)
        covs.append(np.where(np.isfinite(matrix), matrix, 0.0))
    return torch.from_numpy(np.stack(means)), torch.from_numpy(np.stack(covs))


def outlier_coordinates(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor, window: int = 2
                        ) -> torch.Tensor:
    """T x D booleans: the joints (both coordinates) measured implausibly far from the track around them. A
    joint's distance to the median of its positions over the ``window`` frames on each side is compared with
    a robust spread: the larger of 1.4826 x the median absolute distance over the track and the joint's median
    predicted standard deviation. Beyond ``OUTLIER_SPREADS`` of it, the measurement is left out: one bad
    detection would otherwise set the process noise and drag the frames around it."""
    t_len, d = means.shape
    if t_len < 2 * window + 1:
        return torch.zeros_like(observed)
    pos = torch.where(observed, means, torch.nan).reshape(t_len, d // 2, 2)
    padded = torch.cat([pos[:1].expand(window, -1, -1), pos, pos[-1:].expand(window, -1, -1)])
    neighbours = padded.unfold(0, 2 * window + 1, 1)  # T x J x 2 x (2 window + 1)
    centre = torch.nanmedian(neighbours, dim=-1).values
    dist = (pos - centre).norm(dim=-1)  # T x J, NaN where unobserved
    spread = 1.4826 * torch.nanmedian(dist, dim=0).values
    var = torch.diagonal(covs, dim1=-2, dim2=-1).reshape(t_len, d // 2, 2).sum(-1)
    predicted = torch.nanmedian(torch.where(observed[:, ::2], var, torch.nan), dim=0).values.clamp(min=0).sqrt()
    limit = OUTLIER_SPREADS * torch.maximum(spread, predicted)
    far = torch.nan_to_num(dist, nan=0.0) > torch.nan_to_num(limit, nan=math.inf)
    return far.repeat_interleave(2, dim=1) & observed


def _online(means: torch.Tensor, covs: torch.Tensor, observed: torch.Tensor, alpha: float | None, q: float | None,
            lag: int, warmup: int) -> tuple[NoiseFit, torch.Tensor, torch.Tensor]:
    """One track through an ``OnlineSmoother``, frame by frame: alpha and q given, or fitted on the first
    ``warmup`` frames (at least 3) and fixed from then on."""
    if alpha is not None and q is not None:
        smoother, given, start = OnlineSmoother(means.shape[1], alpha, q, lag), [], 0
    else:
        start = max(3, min(warmup, len(means)))
        smoother, given = OnlineSmoother.from_warmup(means[:start], covs[:start], observed[:start], lag, alpha, q)
    given += [e for t in range(start, len(means)) for e in smoother.step(means[t], covs[t], observed[t])]
    given += smoother.flush()
    given.sort(key=lambda e: e[0])
    fit = NoiseFit(smoother.alpha, smoother.q, math.nan)
    return fit, torch.stack([e[1] for e in given]), torch.stack([e[2] for e in given])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N x 4) with every box in ``b`` (M x 4), ``[x, y, w, h]``."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class PeopleTracker:
    """Identities across frames. Each frame's people are matched to the live tracks by box IoU, one to one, with
    the Hungarian algorithm (scipy's ``linear_sum_assignment``); a pair below ``min_iou`` is no match. With
    ``gate`` (a probability, e.g. 0.999), a pair is also refused when the two poses differ by more than that
    quantile of the chi-square under their summed covariances (the squared Mahalanobis distance over the 2J
    coordinates): the covariance says how far a person's joints can plausibly be from where they were.
    Unmatched people start new tracks; a track unseen for more than ``max_age`` frames ends."""

    def __init__(self, min_iou: float = 0.3, max_age: int = 10, gate: float | None = None) -> None:
        if not 0.0 <= min_iou <= 1.0 or max_age < 0 or (gate is not None and not 0.0 < gate < 1.0):
            raise ValueError(f"min_iou in [0, 1], max_age >= 0 and gate in (0, 1) expected, got {min_iou}, "
                             f"{max_age}, {gate}")
        self.min_iou, self.max_age, self.gate = min_iou, max_age, gate
        self.tracks: dict[int, dict] = {}  # id -> {"box", "keypoints", "cov", "last"}
        self.frame, self.next_id = 0, 0

    def update(self, boxes: np.ndarray, keypoints: np.ndarray | None = None, covs: np.ndarray | None = None
               ) -> list[int]:
        """The track id of each of this frame's people (N x 4 boxes; N x 2J keypoints and N x 2J x 2J
        covariances, needed for the gate)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        live = [t for t, tr in self.tracks.items() if self.frame - tr["last"] <= self.max_age]
        self.tracks = {t: self.tracks[t] for t in live}
        ids = [-1] * len(boxes)
        if live and len(boxes):
            iou = box_iou(np.stack([self.tracks[t]["box"] for t in live]), boxes)
            allowed = iou >= self.min_iou
            if self.gate is not None and keypoints is not None and covs is not None:
                limit = chi2.ppf(self.gate, keypoints.shape[1])
                for i, t in enumerate(live):
                    tr = self.tracks[t]
                    diff = np.asarray(keypoints, dtype=np.float64) - tr["keypoints"]
                    total = np.asarray(covs, dtype=np.float64) + tr["cov"]
                    d2 = np.einsum("nd,nd->n", diff, np.linalg.solve(total, diff[..., None])[..., 0])
                    allowed[i] &= d2 <= limit
            rows, cols = linear_sum_assignment(np.where(allowed, -iou, 1e6))
            for r, c in zip(rows, cols, strict=True):
                if allowed[r, c]:
                    ids[c] = live[r]
        for n, box in enumerate(boxes):
            if ids[n] < 0:
                ids[n], self.next_id = self.next_id, self.next_id + 1
            self.tracks[ids[n]] = {"box": box, "last": self.frame,
                                   "keypoints": None if keypoints is None else np.asarray(keypoints[n], np.float64),
                                   "cov": None if covs is None else np.asarray(covs[n], np.float64)}
        self.frame += 1
        return ids
