"""Pose models: timm backbones, the TIC-TAC bottleneck, keypoint heads, covariance heads."""

from pose_toss.models.checkpoint import load_model, save_model
from pose_toss.models.covariance_heads import (
    DiagonalCovariance,
    FullCovariance,
    IdentityCovariance,
    IsotropicCovariance,
    TICCovarianceHead,
)
from pose_toss.models.pose_model import PoseModel, PoseOutput, build_pose_model

__all__ = [
    "DiagonalCovariance", "FullCovariance", "IdentityCovariance", "IsotropicCovariance", "PoseModel", "PoseOutput",
    "TICCovarianceHead",
    "build_pose_model", "load_model", "save_model",
]
