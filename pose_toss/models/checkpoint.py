"""Model files: safetensors weights with the model's own config and a checksum of the weights in the metadata."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from pose_toss.config import ModelConfig
from pose_toss.models.covariance_heads import UNSET_IS_NAN
from pose_toss.models.pose_model import PoseModel
from pose_toss.outputs import atomic_write_bytes
from pose_toss.skeletons import skeleton_from_dict

META_KEY = "pose_toss_model"
CHECKSUM_KEY = "pose_toss_sha256"


class ModelFileError(ValueError):
    """A model file that cannot be trusted: unreadable, truncated, or its weights not the ones written."""


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf (a running scale that is still NaN, meaning
    "not measured yet", is not one of them)."""
    bad = []
    for k, v in state.items():
        if not v.is_floating_point() or bool(torch.isfinite(v).all()):
            continue
        if k.rsplit(".", 1)[-1] in UNSET_IS_NAN and bool(torch.isnan(v).all()):
            continue
        bad.append(k)
    return bad


def save_model(model: PoseModel, path: str | os.PathLike) -> Path:
    """Write the weights, the model config and the weights' checksum (in the safetensors metadata) atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save_bytes(state, metadata={META_KEY: json.dumps(model.file_metadata()),
                                       CHECKSUM_KEY: weights_checksum(state)})
    atomic_write_bytes(path, blob)
    return Path(path)


def read_model_file(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, weights) of a model file, its checksum verified when it has one (files written before
    checksums existed load without)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt or truncated file
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from None
    expected = meta.get(CHECKSUM_KEY)
    if expected is not None and weights_checksum(state) != expected:
        raise ModelFileError(f"{path}: the weights do not match the checksum stored with them: the file was "
                             "damaged after it was written (disk, copy or transfer); use another copy or checkpoint")
    return meta, {k: v.to(map_location) for k, v in state.items()}


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path, mismatch: str) -> None:
    """``model.load_state_dict(state)``; names or shapes that differ are a ValueError ``path: mismatch (why)``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ValueError(f"{path}: {mismatch} ({first})") from None


def load_state_checked(model: torch.nn.Module, path: str | os.PathLike, map_location="cpu", fits: str = "") -> None:
    """Load a model file's weights into ``model``; a file that does not fit it is a clear error."""
    _load_weights(model, read_model_file(path, map_location)[1], path, f"its weights do not fit {fits or 'this model'}")


# What files from earlier versions were when they lack a key: z at the features before it could enter at the head,
# a per-channel offset before the grid map, the covariance training the backbone through z, an absolute eps1.
EARLIER_DEFAULTS = {"bottleneck_at": "features", "bottleneck_grid": 1, "covariance_trains_backbone": True,
                    "tic_eps_relative": False}


def model_arguments(metadata: dict) -> tuple[ModelConfig, int, int, int]:
    """``PoseModel``'s arguments from a model file's metadata: ``{"model": <the model section>, "num_joints",
    "input_size", "heatmap_stride"}``, or the flat dict earlier versions wrote (its model keys beside the
    others, under the same names). Never downloads weights: ``pretrained`` is off."""
    sizes = {k: metadata[k] for k in ("num_joints", "input_size", "heatmap_stride") if k in metadata}
    if "model" in metadata:
        section = dict(metadata["model"])
    else:
        section = {k: v for k, v in metadata.items() if k not in sizes}
        for key, value in EARLIER_DEFAULTS.items():
            section.setdefault(key, value)
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown model options {unknown}")
    if "num_joints" not in sizes:
        raise ValueError("no num_joints")
    config = ModelConfig(**{**section, "pretrained": False})
    return config, sizes["num_joints"], sizes.get("input_size", 256), sizes.get("heatmap_stride", 4)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> PoseModel:
    """Rebuild a model from a file written by ``save_model``, without any training config, **in eval mode**
    (batch-norm statistics fixed, as for inference; call ``.train()`` to train it further).

    Refuses a damaged file (checksum), one whose config does not match its weights, and one whose
    weights are not finite (a diverged training), each with what is wrong."""
    path = Path(path)
    meta, state = read_model_file(path)
    if META_KEY not in meta:
        raise ValueError(f"{path}: metadata has no '{META_KEY}' entry; was it written by pose_toss.save_model?")
    try:
        config = json.loads(meta[META_KEY])
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: metadata '{META_KEY}' is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: metadata '{META_KEY}' must be a JSON object, got {type(config).__name__}")
    bad = non_finite_tensors(state)
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensors hold NaN or Inf (e.g. {bad[0]}): the training that "
                         "wrote it diverged; use an earlier checkpoint or train again with a lower train.lr")
    try:
        model = PoseModel(*model_arguments(config))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: metadata '{META_KEY}' does not describe a model this version builds ({e})") from None
    _load_weights(model, state, path, "the weights do not match the model its metadata describes")
    if config.get("skeleton") is not None:
        try:
            model.skeleton = skeleton_from_dict(config["skeleton"], f"{path}: metadata skeleton")
        except ValueError as e:
            raise ModelFileError(str(e)) from None
        if model.skeleton.num_joints != model.num_joints:
            raise ModelFileError(f"{path}: its skeleton {model.skeleton.name!r} has {model.skeleton.num_joints} joints "
                                 f"but the model predicts {model.num_joints}")
    return model.to(map_location).eval()
