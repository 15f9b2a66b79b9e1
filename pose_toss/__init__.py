"""pose-toss: calibrated full joint covariances for 2D human pose estimators.

The names below are imported on first use (PEP 562), so ``import pose_toss`` and ``pose-toss --help`` stay
quick and load torch only when a model, a loss or the trainer is asked for.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "PoseModel": "pose_toss.models.pose_model",
    "PoseOutput": "pose_toss.models.pose_model",
    "build_pose_model": "pose_toss.models.pose_model",
    "TICCovarianceHead": "pose_toss.models.covariance_heads",
    "IsotropicCovariance": "pose_toss.models.covariance_heads",
    "load_model": "pose_toss.models.checkpoint",
    "train": "pose_toss.engine.trainer",
    "evaluate_checkpoint": "pose_toss.commands.eval",
    "PoseEstimator": "pose_toss.engine.estimator",
    "Person": "pose_toss.engine.estimator",
    "save_model": "pose_toss.models.checkpoint",
    "Config": "pose_toss.config",
    "ConfigError": "pose_toss.config",
    "load_config": "pose_toss.config",
    "condition": "pose_toss.covariance",
    "Skeleton": "pose_toss.skeletons",
    "LSP14": "pose_toss.skeletons",
    "MPII16": "pose_toss.skeletons",
    "COCO17": "pose_toss.skeletons",
    "COMMON14": "pose_toss.skeletons",
    "get_skeleton": "pose_toss.skeletons",
    "load_skeleton": "pose_toss.skeletons",
    "to_common14": "pose_toss.skeletons",
    "keypoint_ap_against_file": "pose_toss.engine.coco_eval",
    "GraphedInference": "pose_toss.engine.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pose_toss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
