"""A covariance for a pose model that is already trained.

TIC-TAC's covariance network reads the embedding detached, so it can be learnt after the fact: the pose
model stays frozen (eval mode, no gradient: its means cannot change), and only a covariance network is
trained, with the Gaussian NLL of the frozen means. ``fit_covariance`` is the loop for any model;
``fit_model_covariance`` applies it to a pose-toss model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch import nn

from pose_toss.config import FITTED_COVARIANCES
from pose_toss.engine.trainer import TrainingDiverged
from pose_toss.losses import gaussian_nll
from pose_toss.models.pose_model import PoseModel


def fit_covariance(pose_fn: Callable, covariance_fn: Callable, parameters: Iterable[nn.Parameter], loader, *,
                   epochs: int = 3, lr: float = 1e-3, device: str | torch.device = "cpu",
                   validate: Callable[[], dict] | None = None, log=print) -> list[dict]:
    """Train only ``parameters`` (a covariance network's) with the Gaussian NLL of a frozen pose model.

    ``pose_fn(images) -> (mean B x 2J, state)`` runs the frozen model (called without gradient);
    ``covariance_fn(state) -> B x 2J x 2J`` is the covariance being learnt from that state, e.g.
    ``lambda s: tic_head(s.z, decode_fn, s.context)`` with a ``TICCovarianceHead`` and the model's decoder.
    ``loader`` yields dicts with ``image``, ``target`` (B x 2J, the means' pixels) and ``visibility``
    (B x J). ``validate()`` (optional) is called after each epoch; its numbers join that epoch's line.
    Returns one dict per epoch (mean training NLL, seconds, and the validation numbers).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: pass the covariance network's parameters")
    device = torch.device(device)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history = []
    for epoch in range(epochs):
        start, total, count, skipped = time.perf_counter(), 0.0, 0, 0
        for batch in loader:
            if "image" not in batch:  # every image of the batch was unreadable
                continue
            images = batch["image"].to(device, non_blocking=True)
            with torch.no_grad():
                mean, state = pose_fn(images)
            try:
                nll = gaussian_nll(mean.detach(), covariance_fn(state), batch["target"].to(device),
                                   batch["visibility"].to(device)).mean()
            except FloatingPointError:  # a non-finite covariance: skip the step, as training does
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            nll.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            total, count = total + float(nll.detach()), count + 1
        if count == 0:  # nothing was learnt: an empty loader, or a covariance non-finite on every batch
            raise TrainingDiverged(f"fit-covariance epoch {epoch + 1}: no step trained ({skipped} batches skipped "
                                   f"for a non-finite covariance; an empty loader skips none)")
        line = {"epoch": epoch + 1, "train_nll": total / count, "skipped_steps": skipped,
                "seconds": round(time.perf_counter() - start, 2)}
        if validate is not None:
            line.update({f"val_{k}": v for k, v in validate().items()})
        history.append(line)
        log(f"fit-covariance epoch {epoch + 1}/{epochs}: train NLL {line['train_nll']:.2f}"
            + (f", val NLL {line['val_nll']:.2f}" if "val_nll" in line else "") + f" | {line['seconds']:.0f} s")
    return history


# The modules that make the covariance (state-dict prefixes): what fit-covariance replaces and trains.
COVARIANCE_MODULES = ("cov_head.", "local_scale.")


def with_fresh_covariance(model, covariance: str):
    """A copy of ``model`` whose covariance network is a new, untrained ``covariance`` ("tic", "full" or
    "diagonal"); every other weight (and so every mean) is the model's own."""
    if covariance not in FITTED_COVARIANCES:
        raise ValueError(f"covariance must be one of {FITTED_COVARIANCES}, got {covariance!r}")
    fresh = PoseModel(replace(model.config, covariance=covariance, pretrained=False), model.num_joints,
                      model.input_size, model.heatmap_stride)
    fresh.skeleton = model.skeleton  # its model file keeps the joint set (and occlusion_neighbours reads it)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(COVARIANCE_MODULES)}
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith(COVARIANCE_MODULES) for k in missing):
        raise ValueError(f"the model's weights do not fit a {covariance} copy of it (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return fresh.to(next(model.parameters()).device)


def fit_model_covariance(model, loader, *, epochs: int = 3, lr: float = 1e-3, device="cpu",
                         validate: Callable[[], dict] | None = None, log=print) -> list[dict]:
    """``fit_covariance`` on a pose-toss model: everything but its covariance networks (``model.cov_head`` and
    the local scale, if any) frozen and in eval mode (batch norm's statistics fixed), those trained (the
    running J scale too).

    With ``validate`` returning ``nll``, the covariance networks end as they were at the epoch of the lowest
    validation NLL, as training keeps its best model: fitted from scratch on the training split they overfit its
    residuals, which are smaller than unseen ones. That epoch's history line has ``kept: True``."""
    best: dict = {"nll": math.inf, "state": None, "epoch": 0}
    calls = 0

    def validate_and_keep() -> dict:
        nonlocal calls
        calls += 1
        numbers = validate()
        nll = numbers.get("nll", math.nan)
        if math.isfinite(nll) and nll < best["nll"]:
            best.update(nll=nll, epoch=calls, state={k: v.detach().clone() for k, v in model.state_dict().items()
                                                     if k.startswith(COVARIANCE_MODULES)})
        return numbers

    model.to(device).eval()
    trained = [p for name, p in model.named_parameters() if name.startswith(COVARIANCE_MODULES)]
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(COVARIANCE_MODULES))
    model.cov_head.train()

    def pose_fn(images):
        normalised = model.normalise(images)
        feats = model.backbone(normalised)
        z, context = model.embed(feats), model.decoder_input(feats)
        return model.decode(z, context), (z, feats, context, normalised)

    def covariance_fn(state):
        z, feats, context, normalised = state
        return model.covariance(z, feats, context, images=normalised)[0]

    try:
        history = fit_covariance(pose_fn, covariance_fn, trained, loader, epochs=epochs, lr=lr, device=device,
                                 validate=validate_and_keep if validate is not None else None, log=log)
        if best["state"] is not None:
            model.load_state_dict(best["state"], strict=False)
            history[best["epoch"] - 1]["kept"] = True
        return history
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)


class EpochDraws:
    """A training loader iterated once per epoch, each pass a new augmentation draw and order, as in training."""

    def __init__(self, loader) -> None:
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        self.loader.dataset.set_epoch(self.epoch)
        self.loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)
