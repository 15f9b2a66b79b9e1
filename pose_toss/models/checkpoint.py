"""Model files: safetensors weights with the model's own config in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from pose_toss.io import atomic_write_bytes
from pose_toss.models.pose_model import PoseModel

META_KEY = "pose_toss_model"


def save_model(model: PoseModel, path: str | os.PathLike) -> Path:
    """Write the weights and the model config (in the safetensors metadata) atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save_bytes(state, metadata={META_KEY: json.dumps(model.config)})
    atomic_write_bytes(path, blob)
    return Path(path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> PoseModel:
    """Rebuild a model from a file written by ``save_model``, without any training config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if META_KEY not in meta:
        raise ValueError(f"{path}: metadata has no '{META_KEY}' entry; was it written by pose_toss.save_model?")
    config = json.loads(meta[META_KEY])
    # Files from earlier versions load as what they were: z at the features before it could enter at
    # the head, a per-channel offset before the grid map, the covariance training the backbone through
    # z, and an absolute eps1.
    config.setdefault("bottleneck_at", "features")
    config.setdefault("bottleneck_grid", 1)
    config.setdefault("covariance_trains_backbone", True)
    config.setdefault("tic_eps_relative", False)
    model = PoseModel(**config, pretrained=False)
    model.load_state_dict(state)
    return model.to(map_location)
