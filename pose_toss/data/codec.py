"""Gaussian heatmaps at a stride, and their decoding (soft-argmax, argmax with sub-pixel refinement).

Heatmap cell (u, v) covers input pixels ``stride*u .. stride*u + stride-1``; its centre sits at input
coordinate ``stride*u + (stride-1)/2``. Encoding and both decoders use this one mapping, so an encoded
joint decodes back to where it was.
"""

from __future__ import annotations

import numpy as np
import torch


class HeatmapCodec:
    def __init__(self, input_size: int, stride: int = 4, sigma: float = 2.0) -> None:
        if input_size % stride:
            raise ValueError(f"input_size {input_size} is not a multiple of the heatmap stride {stride}")
        self.input_size = int(input_size)
        self.stride = int(stride)
        self.sigma = float(sigma)
        self.size = self.input_size // self.stride
        self._grid = np.arange(self.size, dtype=np.float32)

    @property
    def offset(self) -> float:
        return (self.stride - 1) / 2.0

    def to_heatmap(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy) - self.offset) / self.stride

    def to_input(self, uv):
        return uv * self.stride + self.offset

    def encode(self, joints: np.ndarray, visibility: np.ndarray) -> np.ndarray:
        """J x H x W float32 Gaussians (peak 1) at the joints; invisible or off-map joints give zeros."""
        uv = self.to_heatmap(joints).astype(np.float32)
        inv = -0.5 / self.sigma**2
        gx = np.exp(inv * (self._grid[None, :] - uv[:, :1]) ** 2)
        gy = np.exp(inv * (self._grid[None, :] - uv[:, 1:]) ** 2)
        keep = (np.asarray(visibility) > 0) & np.isfinite(uv).all(axis=1)
        keep &= (uv > -0.5).all(axis=1) & (uv < self.size - 0.5).all(axis=1)
        heat = gy[:, :, None] * gx[:, None, :]
        heat[~keep] = 0.0
        return heat

    def decode_argmax(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(J x 2 input px, J peak values): the maximum, refined by a parabola on the log-heatmap.

        For a Gaussian the log is a parabola, so the refinement is exact away from the border.
        """
        heat = np.asarray(heatmaps, dtype=np.float64)
        j, h, w = heat.shape
        flat = heat.reshape(j, -1)
        idx = flat.argmax(axis=1)
        peak = flat[np.arange(j), idx]
        v, u = np.divmod(idx, w)
        uv = np.stack([u, v], axis=1).astype(np.float64)
        logh = np.log(np.maximum(heat, 1e-12))
        rows = np.arange(j)
        for axis, (size, coord) in enumerate(((w, u), (h, v))):
            if size < 3:
                continue
            # Three cells around the peak, shifted inwards at the border: any three samples of a
            # log-Gaussian fix its parabola, so the vertex is exact there too.
            c = np.clip(coord, 1, size - 2)
            if axis == 0:
                lm, l0, lp = logh[rows, v, c - 1], logh[rows, v, c], logh[rows, v, c + 1]
            else:
                lm, l0, lp = logh[rows, c - 1, u], logh[rows, c, u], logh[rows, c + 1, u]
            curv = lm - 2 * l0 + lp
            ok = (curv < 0) & (peak > 0)
            vertex = c + 0.5 * (lm - lp) / np.where(ok, curv, -1.0)
            uv[:, axis] = np.where(ok, np.clip(vertex, coord - 1.0, coord + 1.0), coord)
        return self.to_input(uv), peak

    def soft_argmax(self, heatmaps: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        return soft_argmax(heatmaps, self.stride, beta)


def soft_argmax(heatmaps: torch.Tensor, stride: int = 4, beta: float | None = None) -> torch.Tensor:
    """Differentiable expected location, (..., J, H, W) -> (..., J, 2) in input pixels.

    With ``beta`` the maps are logits: weights are ``softmax(beta * h)`` (what a network head emits).
    Without it the maps are read as non-negative densities and normalised by their sum (decoding
    encoded target heatmaps).
    """
    *lead, h, w = heatmaps.shape
    flat = heatmaps.reshape(*lead, h * w)
    if flat.dtype in (torch.float16, torch.bfloat16):  # the expectation is taken in float32 under autocast
        flat = flat.float()
    if beta is not None:
        prob = torch.softmax(beta * flat, dim=-1)
    else:
        flat = flat.clamp_min(0)
        prob = flat / flat.sum(-1, keepdim=True).clamp_min(1e-12)
    prob = prob.reshape(*lead, h, w)
    offset = (stride - 1) / 2.0
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype) * stride + offset
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype) * stride + offset
    x = (prob.sum(-2) * xs).sum(-1)
    y = (prob.sum(-1) * ys).sum(-1)
    return torch.stack([x, y], dim=-1)
