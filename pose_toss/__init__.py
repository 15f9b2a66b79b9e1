"""pose-toss: calibrated full joint covariances for 2D human pose estimators."""

from pose_toss.config import Config, ConfigError, load_config
from pose_toss.covariance import condition
from pose_toss.models import PoseModel, PoseOutput, TICCovarianceHead, build_pose_model, load_model, save_model
from pose_toss.skeletons import COCO17, COMMON14, LSP14, MPII16, Skeleton, get_skeleton, to_common14

__version__ = "0.1.0"

__all__ = [
    "PoseModel", "PoseOutput", "TICCovarianceHead", "build_pose_model", "load_model", "save_model",
    "COCO17", "COMMON14", "Config", "ConfigError", "LSP14", "MPII16", "Skeleton", "get_skeleton",
    "condition", "load_config", "to_common14",
]
