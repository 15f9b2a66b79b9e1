"""Data: the synthetic dataset with known covariance, crops and augmentation, heatmaps, torch Dataset."""

from pose_toss.data.codec import HeatmapCodec, soft_argmax
from pose_toss.data.dataset import PoseDataset, load_image_rgb
from pose_toss.data.synthetic import SyntheticPoseDataset, load_lsp_poses
from pose_toss.data.synthetic_files import read_synthetic, write_synthetic
from pose_toss.data.transforms import (
    TopDownTransform,
    affine_covariance,
    affine_points,
    box_to_center_size,
    center_scale_to_size,
    crop_affine,
    invert_affine,
    permute_covariance,
)

__all__ = [
    "HeatmapCodec", "PoseDataset", "SyntheticPoseDataset", "TopDownTransform", "affine_covariance",
    "affine_points", "box_to_center_size", "center_scale_to_size", "crop_affine", "invert_affine",
    "load_image_rgb", "load_lsp_poses", "permute_covariance", "read_synthetic", "soft_argmax",
    "write_synthetic",
]
