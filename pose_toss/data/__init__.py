"""Data: the synthetic dataset with known covariance, crops and augmentation, heatmaps, torch Dataset."""

from pose_toss.data.codec import HeatmapCodec, soft_argmax
from pose_toss.data.dataset import PoseDataset, collate_samples, crop_labels, load_image_rgb
from pose_toss.data.readers import (
    AnnotationError,
    dataset_records,
    read_coco,
    read_lsp,
    read_lspet,
    read_mpii,
    to_common_records,
)
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
    "AnnotationError", "HeatmapCodec", "PoseDataset", "SyntheticPoseDataset", "TopDownTransform",
    "affine_covariance", "affine_points", "box_to_center_size", "center_scale_to_size", "collate_samples",
    "crop_affine", "crop_labels", "dataset_records", "invert_affine", "load_image_rgb", "load_lsp_poses",
    "permute_covariance", "read_coco", "read_lsp", "read_lspet", "read_mpii", "read_synthetic", "soft_argmax",
    "to_common_records", "write_synthetic",
]
