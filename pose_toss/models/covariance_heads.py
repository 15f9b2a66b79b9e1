"""Covariance parameterisations as modules on the embedding z: identity, diagonal, full, TIC.

Each returns B x D x D symmetric positive definite matrices in input pixels^2, computed in float32.
The TIC head is usable on any model: give it the model's embedding and a ``decode_fn(z) -> B x 2J``.

As in TIC-TAC, the covariance networks read the embedding detached: a covariance loss trains the
covariance network and never reaches the backbone through z (``covariance_trains_backbone=True`` lets it).

Constructors are ``(embed_dim, num_joints, *, options)``, each option named as in the model config
(``config.ModelConfig``) and listed in the class's ``OPTIONS``; ``COVARIANCE_HEADS`` maps each
``model.covariance`` name to its class and ``create_covariance_head`` builds one from a model config.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from pose_toss.covariance import (
    cholesky_from_vector,
    diagonal_covariance,
    full_covariance,
    heatmap_moments,
    hessian_gram,
    jacobian,
    joint_patches,
    rms_scale,
    tic_covariance,
    trace_scale,
)

# Pre-activations are clamped so that no embedding, however large, gives inf or NaN.
_CLAMP = 30.0
# Buffers whose NaN means "not measured yet" (a model that never trained), not a diverged state.
UNSET_IS_NAN = ("jacobian_log_scale", "hessian_log_scale")
# softplus(0): zero pre-activations (the initial state) give exactly the initial scale.
LN2 = 0.6931471805599453


def _mlp(embed_dim: int, hidden: int, out: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, out))
    nn.init.zeros_(mlp[-1].weight)  # start from the bias: a calm, isotropic initial covariance
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def _precision(mlp: nn.Module) -> torch.dtype:
    """A covariance network's working precision: its weights', at least float32 (a ``.double()`` head
    computes in float64)."""
    return torch.promote_types(next(mlp.parameters()).dtype, torch.float32)


def _clean(z: torch.Tensor, mlp: nn.Module, covariance_trains_backbone: bool = False) -> torch.Tensor:
    """The covariance network's input: finite, bounded, in the network's precision (``_precision``),
    detached unless it may train the backbone."""
    z = torch.nan_to_num(z.to(_precision(mlp)), nan=0.0, posinf=1e4, neginf=-1e4).clamp(-1e4, 1e4)
    return z if covariance_trains_backbone else z.detach()


@contextlib.contextmanager
def eval_mode(modules: Iterable[nn.Module]):
    """Temporarily put ``modules`` in eval mode (batch statistics must not couple samples in J)."""
    modules = [m for m in modules if m is not None]
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, s in zip(modules, states, strict=True):
            m.train(s)


class IdentityCovariance(nn.Module):
    """The identity: what plain MSE training assumes."""

    OPTIONS = ()

    def __init__(self, embed_dim: int, num_joints: int) -> None:
        super().__init__()
        self.dim = 2 * num_joints

    def forward(self, z: torch.Tensor, *_, **__) -> torch.Tensor:
        dtype = torch.promote_types(z.dtype, torch.float32)
        return torch.eye(self.dim, device=z.device, dtype=dtype).expand(z.shape[0], -1, -1)


class DiagonalCovariance(nn.Module):
    """Per-coordinate variances from z."""

    OPTIONS = ("cov_hidden", "init_std", "cov_floor", "covariance_trains_backbone")

    def __init__(self, embed_dim: int, num_joints: int, *, cov_hidden: int = 128, init_std: float = 4.0,
                 cov_floor: float = 1e-3, covariance_trains_backbone: bool = False) -> None:
        super().__init__()
        self.mlp = _mlp(embed_dim, cov_hidden, 2 * num_joints)
        self.scale = init_std**2 / LN2
        self.cov_floor = cov_floor
        self.covariance_trains_backbone = covariance_trains_backbone

    def forward(self, z: torch.Tensor, *_, **__) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            raw = self.mlp(_clean(z, self.mlp, self.covariance_trains_backbone)).clamp(-_CLAMP, _CLAMP)
            return diagonal_covariance(raw, self.cov_floor, self.scale)


class IsotropicCovariance(nn.Module):
    """One variance per joint, ``v_j I_2``, from the *detached* embedding: the loss-prediction
    baseline, a small head that learns each joint's expected squared error without touching the pose
    features (train it with the ``loss_pred`` objective)."""

    OPTIONS = ("cov_hidden", "init_std", "cov_floor")

    def __init__(self, embed_dim: int, num_joints: int, *, cov_hidden: int = 128, init_std: float = 4.0,
                 cov_floor: float = 1e-3) -> None:
        super().__init__()
        self.mlp = _mlp(embed_dim, cov_hidden, num_joints)
        self.scale = init_std**2 / LN2
        self.cov_floor = cov_floor

    def forward(self, z: torch.Tensor, *_, **__) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            raw = self.mlp(_clean(z, self.mlp)).clamp(-_CLAMP, _CLAMP)
            per_coordinate = raw.unsqueeze(-1).expand(*raw.shape, 2).reshape(raw.shape[0], -1)  # x and y alike
            return diagonal_covariance(per_coordinate, self.cov_floor, self.scale)


class FullCovariance(nn.Module):
    """Cholesky factor with a positive diagonal, predicted from z."""

    OPTIONS = ("cov_hidden", "init_std", "cov_floor", "covariance_trains_backbone")

    def __init__(self, embed_dim: int, num_joints: int, *, cov_hidden: int = 128, init_std: float = 4.0,
                 cov_floor: float = 1e-3, covariance_trains_backbone: bool = False) -> None:
        super().__init__()
        self.dim = 2 * num_joints
        self.mlp = _mlp(embed_dim, cov_hidden, self.dim * (self.dim + 1) // 2)
        self.init_std = init_std
        self.cov_floor = cov_floor
        self.covariance_trains_backbone = covariance_trains_backbone

    def forward(self, z: torch.Tensor, *_, **__) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            raw = self.mlp(_clean(z, self.mlp, self.covariance_trains_backbone)).clamp(-_CLAMP, _CLAMP)
            return full_covariance(raw, self.dim, self.cov_floor, self.init_std / LN2, check=False)


@dataclass
class TICParts:
    """What a TIC covariance is made of, per sample: J (B x D x E, detached), eps1 (B), L (B x D x D),
    and the optional Hessian term (eps2 B, H~ B x D x D). A model with a local term gives J as it enters its
    covariance, ``T J`` (``PoseModel.covariance``), so that J's share of the covariance stays a share."""

    jacobian: torch.Tensor
    eps1: torch.Tensor
    chol: torch.Tensor
    eps2: torch.Tensor | None = None
    hess_gram: torch.Tensor | None = None


class TICCovarianceHead(nn.Module):
    """Taylor Induced Covariance: ``eps1^2 J J^T (+ eps2^2 H~) + L L^T + floor I``.

    J = d decode_fn / d z is computed per sample with torch.func, in float32 and without gradient;
    eps1, eps2 and the Cholesky factor L come from a small MLP on the (detached) z. Pass
    ``eval_modules`` (the decoder's modules) to run the decoder in eval mode while J is taken.

    ``tic_eps_relative`` (the default): eps1 is measured against J's typical size,
    ``eps1 = s(z) / r`` with ``s`` from the MLP (pixels) and ``r`` a running average of the batches'
    median ``rms(J) = sqrt(tr(J J^T) / D)``, kept in a buffer like batch norm's running statistics
    (updated from earlier batches in training, fixed in eval, so samples stay independent). J's global
    scale varies by orders of magnitude between models and during training, and an absolute eps1 has
    a bounded range; ``r`` absorbs that, while each sample's own ``|J|`` still sets its Taylor term.
    Initially the two terms carry comparable variance. ``False`` is the earlier
    ``eps1 = softplus(raw) / ln 2``, for model files written with it. eps2 is treated alike with H~.
    """

    OPTIONS = ("cov_hidden", "init_std", "cov_floor", "covariance_trains_backbone", "use_hessian", "jacobian_chunk",
               "tic_eps_relative")

    def __init__(self, embed_dim: int, num_joints: int, *, cov_hidden: int = 128, init_std: float = 4.0,
                 cov_floor: float = 1e-3, covariance_trains_backbone: bool = False, use_hessian: bool = False,
                 jacobian_chunk: int | None = None, tic_eps_relative: bool = True, scale_momentum: float = 0.1
                 ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.embed_dim = embed_dim
        self.dim = 2 * num_joints
        self.use_hessian = use_hessian
        self.cov_floor = cov_floor
        self.init_std = init_std
        self.jacobian_chunk = jacobian_chunk
        self.covariance_trains_backbone = covariance_trains_backbone
        self.tic_eps_relative = tic_eps_relative
        self.scale_momentum = scale_momentum
        self.mlp = _mlp(embed_dim, cov_hidden, 2 + self.dim * (self.dim + 1) // 2)
        if tic_eps_relative:  # log of the running scales; NaN until the first batch
            self.register_buffer("jacobian_log_scale", torch.tensor(float("nan")))
            if use_hessian:
                self.register_buffer("hessian_log_scale", torch.tensor(float("nan")))

    def running_scale(self, name: str, per_sample: torch.Tensor) -> torch.Tensor:
        """The scale eps is measured against: the running average (in log space) of the batches' median
        ``per_sample`` scale. Training reads the value from earlier batches, then updates it; the first
        batch (or an eval before any training) uses its own median."""
        buffer = getattr(self, name)
        batch = per_sample.detach().to(buffer.dtype).log().median()
        unset = torch.isnan(buffer)
        used = torch.where(unset, batch, buffer)
        if self.training:
            with torch.no_grad():
                buffer.copy_(torch.where(unset, batch, torch.lerp(buffer, batch, self.scale_momentum)))
        return used.exp()

    def parameters_from_embedding(self, z: torch.Tensor, jacobian_scale: torch.Tensor | None = None,
                                  hessian_scale: torch.Tensor | None = None
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps1 B, eps2 B, L B x D x D) from z; relative eps is divided by the given scales."""
        raw = self.mlp(_clean(z, self.mlp, self.covariance_trains_backbone)).clamp(-_CLAMP, _CLAMP)
        eps1 = torch.nn.functional.softplus(raw[:, 0]) / LN2
        eps2 = torch.nn.functional.softplus(raw[:, 1]) / LN2
        if self.tic_eps_relative:
            if jacobian_scale is None:
                raise ValueError("eps relative to the Jacobian needs the Jacobian's scale")
            eps1 = eps1 * self.init_std / jacobian_scale
            if hessian_scale is not None:
                eps2 = eps2 * self.init_std / hessian_scale
        low = cholesky_from_vector(raw[:, 2:], self.dim, 0.0) * (self.init_std / LN2)
        return eps1, eps2, low

    def parts(self, z: torch.Tensor, decode_fn: Callable[..., torch.Tensor], *decode_args: torch.Tensor,
              eval_modules: Iterable[nn.Module] = (), jacobian_fn: Callable[..., torch.Tensor] | None = None
              ) -> TICParts:
        """``jacobian_fn(z, *decode_args) -> B x D x E``: a closed form of ``decode_fn``'s Jacobian, used
        instead of torch.func's reverse passes when given."""
        if z.dim() != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(f"z must be B x {self.embed_dim}, got shape {tuple(z.shape)}")
        with eval_mode(eval_modules):
            if jacobian_fn is not None:
                jac = jacobian_fn(z.detach(), *(a.detach() for a in decode_args)).detach()
            else:
                jac = jacobian(decode_fn, z, *decode_args, chunk_size=self.jacobian_chunk)
            if jac.shape[1] != self.dim:
                raise ValueError(f"decode_fn returned {jac.shape[1]} values per sample, expected 2 x num_joints = "
                                 f"{self.dim}")
            hess = hessian_gram(decode_fn, z, *decode_args) if self.use_hessian else None
        with torch.autocast(device_type=z.device.type, enabled=False):
            dtype = _precision(self.mlp)
            jac = torch.nan_to_num(jac.to(torch.promote_types(jac.dtype, dtype)))
            jac_scale = hess_scale = None
            if self.tic_eps_relative:
                jac_scale = self.running_scale("jacobian_log_scale", rms_scale(jac))
                if hess is not None:
                    hess_scale = self.running_scale("hessian_log_scale", trace_scale(hess))
            eps1, eps2, low = self.parameters_from_embedding(z.to(dtype), jac_scale, hess_scale)
        return TICParts(jac, eps1, low, eps2 if hess is not None else None, hess)

    def assemble(self, parts: TICParts) -> torch.Tensor:
        return tic_covariance(parts.jacobian, parts.eps1, parts.chol, parts.eps2, parts.hess_gram, self.cov_floor,
                              check=False)

    def forward(self, z: torch.Tensor, decode_fn: Callable[..., torch.Tensor], *decode_args: torch.Tensor,
                eval_modules: Iterable[nn.Module] = ()) -> torch.Tensor:
        return self.assemble(self.parts(z, decode_fn, *decode_args, eval_modules=eval_modules))


# model.covariance -> its head (the names are config.COVARIANCES; a test checks that they agree).
COVARIANCE_HEADS = {"tic": TICCovarianceHead, "full": FullCovariance, "diagonal": DiagonalCovariance,
                    "isotropic": IsotropicCovariance, "identity": IdentityCovariance}


def create_covariance_head(model_cfg, num_joints: int, init_std: float) -> nn.Module:
    """The head ``model_cfg.covariance`` names, built with the options of ``model_cfg`` (a ``config.ModelConfig``)
    that it takes (its ``OPTIONS``) and the initial spread ``init_std``."""
    kind = COVARIANCE_HEADS[model_cfg.covariance]
    options = {name: init_std if name == "init_std" else getattr(model_cfg, name) for name in kind.OPTIONS}
    return kind(model_cfg.embed_dim, num_joints, **options)


class JointLocalScale(nn.Module):
    """Each joint's scale of the covariance, from what the image shows around that joint.

    The pooled embedding z summarises the whole figure: an occluder, blur or a faded limb on one limb
    barely moves it, while it is exactly what makes that joint's labels and the model's error spread. This
    module looks at a square of the input image (``window`` of its side) around each predicted joint,
    resampled to ``patch`` x ``patch`` pixels, through a small CNN shared by all joints, together with the
    joint's heatmap spread, and gives a log-scale per joint through a small MLP whose hidden layer has a
    learnt bias per joint (it knows which joint it looks at), bounded by ``bound``. The covariance becomes
    ``S cov S`` with ``S = diag(exp(log_scale))`` per coordinate: at initialisation (zero output) S = I. Its
    inputs are detached like z: its loss trains only this module, never the backbone.
    """

    def __init__(self, num_joints: int, *, cov_hidden: int = 64, patch: int = 16, window: float = 0.25,
                 channels: int = 32, bound: float = 3.0, outputs: int = 1, feature_dim: int = 0) -> None:
        super().__init__()
        if outputs not in (1, 3):
            raise ValueError(f"outputs must be 1 (a scale per joint) or 3 (a 2 x 2 map per joint), got {outputs}")
        self.patch, self.window, self.bound, self.outputs = patch, window, bound, outputs
        self.feature_dim = feature_dim
        self.cnn = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.hidden = nn.Linear(channels + len(HEATMAP_STATS) + feature_dim, cov_hidden)
        self.joint_bias = nn.Parameter(0.1 * torch.randn(num_joints, cov_hidden))
        self.out = nn.Linear(cov_hidden, outputs)
        nn.init.zeros_(self.out.weight)  # start from no change: S = I
        nn.init.zeros_(self.out.bias)

    def forward(self, images: torch.Tensor, joints: torch.Tensor, heat_prob: torch.Tensor, stride: int,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` B x 3 x S x S (normalised), ``joints`` B x J x 2 (input pixels), ``heat_prob`` B x J x H x W
        (each joint's heatmap distribution), ``features`` B x J x ``feature_dim`` (what the head saw at each joint;
        only with ``feature_dim``) -> log-scales B x J (``outputs`` 1), or B x J x 3 (log sx, log sy, shear of
        ``covariance.transform_joints``)."""
        if (features is None) != (self.feature_dim == 0):
            raise ValueError(f"this local term reads {self.feature_dim} features per joint; got "
                             f"{'none' if features is None else tuple(features.shape)}")
        with torch.autocast(device_type=images.device.type, enabled=False):
            dtype = _precision(self.out)
            b, j = joints.shape[:2]
            patches = joint_patches(images.detach().to(dtype), joints.detach().to(dtype), self.patch, self.window)
            look = self.cnn(patches).reshape(b, j, -1)
            stats = heatmap_stats(heat_prob.detach().to(dtype), stride)
            parts = [look, stats] + ([features.detach().to(dtype)] if features is not None else [])
            x = torch.nan_to_num(torch.cat(parts, -1)).clamp(-1e4, 1e4)
            raw = self.out(torch.nn.functional.gelu(self.hidden(x) + self.joint_bias.to(dtype)))
            raw = raw.squeeze(-1) if self.outputs == 1 else raw
            return self.bound * torch.tanh(raw / self.bound)  # bounded without a dead zone


# What ``heatmap_stats`` gives per joint.
HEATMAP_STATS = ("log var x", "log var y", "correlation", "log peak", "entropy")


def heatmap_stats(prob: torch.Tensor, stride: int) -> torch.Tensor:
    """B x J x H x W heatmap distributions -> B x J x 5: how widely each spreads (log variances in input px^2,
    the correlation), how peaked it is (log of its largest probability) and its entropy over log(H W)."""
    b, j, h, w = prob.shape
    _, cov = heatmap_moments(prob, stride)
    vxx, vyy, vxy = cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1]
    flat = prob.reshape(b, j, h * w)
    entropy = -(flat * flat.clamp_min(1e-30).log()).sum(-1) / math.log(h * w)
    stats = torch.stack([(vxx + 1e-3).log(), (vyy + 1e-3).log(), vxy / (vxx * vyy + 1e-6).sqrt(),
                         flat.amax(-1).clamp_min(1e-30).log(), entropy], -1)
    return torch.nan_to_num(stats).clamp(-_CLAMP, _CLAMP)
