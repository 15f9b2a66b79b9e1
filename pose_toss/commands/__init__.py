"""The ``pose-toss`` subcommands, one module each with ``add_arguments(parser)`` and ``run(args) -> int``.

``COMMANDS`` names each command's module and one-line help, so ``pose-toss --help`` lists them without
importing any (nor torch); a command's module is imported when it runs or shows its own help.
"""

from __future__ import annotations

import importlib
from types import ModuleType

COMMANDS = {
    "make-synthetic": ("make_synthetic", "render the synthetic pose dataset with its true covariances"),
    "train": ("train", "train a pose model with the config's stages (default: NLL with the TIC covariance)"),
    "eval": ("eval", "metrics, report, COCO results and pictures for a trained model"),
    "compare": ("compare", "train and evaluate methods x learning rates x seeds with the same data and budget: "
                           "mean ± std tables and validation curves"),
    "fit-covariance": ("fit_covariance", "learn a covariance for a trained model, the model frozen (its means "
                                         "unchanged): only the covariance network, with the NLL"),
    "predict": ("predict", "people, keypoints, calibrated scores and full covariances for photos, folders and videos "
                           "(a person detector, tracks, smoothing, pictures with a legend)"),
    "visualize": ("visualize", "draw a model's poses, ellipses and correlations on any images"),
    "smooth": ("smooth", "smooth COCO results with covariances over video frames (Kalman filter and RTS smoother, "
                         "each frame's full covariance as its measurement noise)"),
    "video-bench": ("video_bench", "synthetic video: raw predictions against smoothing with the full covariance, "
                                   "its diagonal and a constant (error, cued limbs, jitter)"),
    "export": ("export", "write a model with its covariance as one ONNX graph (mean, covariance, heatmaps; dynamic "
                         "batch)"),
    "data-check": ("data_check", "counts, problems and a contact sheet of augmented crops for a config's data"),
    "bench": ("bench", "step cost per method, Jacobian, pseudo-label scaling, data, inference and smoothing speed"),
}


def command_module(name: str) -> ModuleType:
    """The module of the command ``name`` (a key of ``COMMANDS``)."""
    return importlib.import_module(f"pose_toss.commands.{COMMANDS[name][0]}")
