"""Typed configuration: YAML files in ``configs/`` loaded into dataclasses, ``--set a.b=c`` overrides.

Every field declares its type in the annotation and its valid range in ``opt(...)``; loading checks
both and names the file (or ``--set``), the dotted key and the expected form on any mistake.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pose_toss.outputs import atomic_write_text
from pose_toss.skeletons import get_skeleton


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def opt(default: Any = dataclasses.MISSING, *, factory: Any = None, min: float | None = None,
        max: float | None = None, choices: tuple | None = None, help: str = "") -> Any:
    meta = {"min": min, "max": max, "choices": choices, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    num_samples: int = opt(2000, min=1, help="number of generated figures")
    image_size: int = opt(128, min=32, max=4096, help="side of the square rendered image, px")
    seed: int = opt(0, min=0, help="generation seed; same seed, same bytes")
    poses_from: str | None = opt(None, help="optional LSP / LSP-extended joints.mat to draw poses from")
    cue_prob: float = opt(0.6, min=0.0, max=1.0, help="probability that a figure carries noise cues")
    max_cues: int = opt(2, min=0, max=6, help="most limbs with a cue (occluder, blur, fade) per figure")
    cue_kind_weights: tuple[float, float, float] = opt(
        factory=lambda: (1.0, 1.0, 1.0),
        help="relative frequency of each cue kind (occluder, blur, fade); an occluder hides its limb's distal joint "
             "(occlusion flag 1), so its weight sets the share of hidden joints (equal weights: about 2%; "
             "LSP flags 7.3%)")
    label_noise: str = opt("annotators", choices=("annotators", "height"),
                           help="annotators: each clean joint's per-axis std is its COCO OKS sigma x s / sqrt(2) "
                                "(s^2 = half the person box's area), what real annotators disagree by; height: "
                                "clean_noise and cue_noise as fractions of the figure's height (the earlier model)")
    cue_gain: float = opt(4.0, min=1.0, max=50.0,
                          help="annotators: an occluder at severity 1 makes the distal joint's along-limb std this "
                               "many times its clean std (blur 0.6, fade 0.5 of the extra)")
    clean_noise: float = opt(0.006, min=1e-5, max=0.2,
                             help="height: std of clean joints' label noise, as a fraction of figure height")
    cue_noise: float = opt(0.05, min=0.0, max=0.5,
                           help="height: std along the limb at full cue severity, as a fraction of figure height")
    val_samples: int = opt(300, min=1, help="validation figures (drawn from a separate index range)")
    test_samples: int = opt(500, min=1, help="test figures for `pose-toss eval --data synthetic`")
    cache_images: bool = opt(False, help="keep each rendered figure in memory after its first epoch (same bytes; "
                                          "the pipeline runs about twice as fast at 64 px; memory: figures x side^2 x "
                                          "3 bytes per data worker)")


@dataclass
class RealDataConfig:
    """Where the real datasets live (see data/README.md); paths are relative to the working directory."""
    mpii_root: str = opt("data/mpii", help="MPII folder: images/ and the annotation files below")
    mpii_train: str = opt("annot/train.json", help="MPII training people, json or the official .mat, "
                                                  "relative to mpii_root")
    mpii_val: str = opt("annot/valid.json", help="MPII validation people, relative to mpii_root")
    lsp_root: str = opt("data/lsp", help="LSP folder: joints.mat and images/")
    lspet_root: str = opt("data/lspet", help="LSP-extended folder: joints.mat and images/")
    coco_root: str = opt("data/coco", help="COCO folder: annotations/ and train2017/, val2017/")
    coco_train: str = opt("annotations/person_keypoints_train2017.json", help="relative to coco_root")
    coco_val: str = opt("annotations/person_keypoints_val2017.json", help="relative to coco_root")
    coco_images: str | None = opt(None, help="images folder of both COCO files, relative to coco_root (null: the "
                                             "annotation file's folder when the images are there, else ../<split> "
                                             "beside annotations/person_keypoints_<split>.json)")


DATASETS = ("synthetic", "lsp", "mpii", "coco", "mpii_lsp")


@dataclass
class AugmentConfig:
    enabled: bool = opt(True, help="turn all augmentation off (evaluation) or on")
    rotation: float = opt(30.0, min=0.0, max=180.0, help="max absolute rotation, degrees")
    scale: tuple[float, float] = opt(factory=lambda: (0.8, 1.2), help="scale range (lo, hi), lo <= hi")
    flip_prob: float = opt(0.5, min=0.0, max=1.0, help="horizontal flip probability (swaps left/right)")
    color_jitter_prob: float = opt(0.5, min=0.0, max=1.0, help="probability of brightness, contrast, saturation "
                                                               "and hue jitter")
    blur_prob: float = opt(0.1, min=0.0, max=1.0, help="probability of a small Gaussian blur")


@dataclass
class DataConfig:
    dataset: str = opt("synthetic", choices=DATASETS,
                       help="synthetic, lsp, mpii, coco, or mpii_lsp (MPII + LSP + LSP-extended on 14 joints)")
    skeleton: str | None = opt(None, help="keypoint set: coco17, mpii16, lsp14, common14 or a skeleton YAML file "
                                          "(names, flip pairs, links, OKS sigmas; see skeletons.py). null: the "
                                          "dataset's own (coco: its file's keypoint category)")
    input_size: int = opt(128, min=32, max=2048, help="side of the square network input, px (multiple of 4)")
    padding: float = opt(1.25, min=1.0, max=3.0, help="crop side = padding x person size")
    heatmap_stride: int = opt(4, choices=(1, 2, 4, 8), help="input pixels per heatmap pixel (4: SimpleBaseline; 8 "
                                                           "halves the deconvolutions and TIC's Jacobian cost)")
    heatmap_sigma: float = opt(2.0, min=0.25, max=16.0, help="Gaussian heatmap sigma, heatmap px")
    oks_sigmas: list[float] | None = opt(None, help="per-joint OKS constants for COCO AP (null: the skeleton's, "
                                                    "COCO's published values; see skeletons.OKS_SIGMAS)")
    batch_size: int = opt(32, min=1, help="people per training step (per process under torchrun)")
    num_workers: int = opt(2, min=0, max=64, help="data-loading worker processes (0: in the main process)")
    synthetic: SyntheticConfig = opt(factory=SyntheticConfig, help="the built-in synthetic dataset")
    real: RealDataConfig = opt(factory=RealDataConfig, help="where the real datasets live")
    augment: AugmentConfig = opt(factory=AugmentConfig, help="training augmentation (albumentations)")


# What train.log may list (metrics.jsonl is always written).
LOG_KINDS = ("jsonl", "tensorboard")
LOSSES = ("mse", "nll", "beta_nll", "faithful", "kl_calibrated", "w2_bound", "loss_pred")
# Losses that read covariance pseudo-labels (W2's target, the calibrated KL's prior).
PSEUDO_LABEL_LOSSES = ("w2_bound", "kl_calibrated")
# Where a W2 stage's pseudo-labels come from (EmbeddingBank): the neighbours' targets or their errors.
LABELS_FROM = ("targets", "residuals")
HEADS = ("heatmap", "regression")
BOTTLENECK_AT = ("head", "features")
COVARIANCES = ("tic", "full", "diagonal", "identity", "isotropic")
# The covariances a likelihood fits: what fit-covariance learns and the local scale acts on.
FITTED_COVARIANCES = ("tic", "full", "diagonal")


@dataclass
class ModelConfig:
    backbone: str = opt("resnet18", help="any timm name with features_only, or a ViT")
    head: str = opt("heatmap", choices=HEADS, help="heatmap: SimpleBaseline deconvolutions and a soft-argmax; "
                                                   "regression: pooled features to coordinates")
    embed_dim: int = opt(64, min=1, max=4096, help="bottleneck size E")
    covariance: str = opt("tic", choices=COVARIANCES,
                          help="tic: eps1^2 J J^T + L L^T (J = d mean / d z); full: a Cholesky factor from z; "
                               "diagonal: per-coordinate variances; identity: plain MSE; isotropic: a variance per "
                               "joint from the detached embedding (loss_pred)")
    pretrained: bool | str = opt(False, help="false, true (timm hub: needs internet) or a local weights file")
    deconv_channels: int = opt(128, min=8, help="channels of the heatmap head's deconvolutions")
    cov_hidden: int = opt(128, min=4, help="hidden units of the covariance networks")
    bottleneck_at: str = opt("head", choices=BOTTLENECK_AT,
                             help="where up(z) re-enters: the head's last layer (TIC's Jacobian skips the "
                                  "deconvolutions) or the backbone features (J through the whole head)")
    bottleneck_grid: int = opt(4, min=2, max=64,
                               help="z is read from the features pooled to grid x grid and re-enters as a "
                                    "grid x grid map resized to the head, so it can move the heatmaps' peaks "
                                    "(files written with the earlier per-channel offset load as grid 1)")
    covariance_trains_backbone: bool = opt(False, help="false: the covariance network reads z detached (TIC-TAC), "
                                                       "so covariance losses never train the backbone")
    local_covariance: bool = opt(False, help="scale each joint's rows and columns of a tic, full or diagonal "
                                              "covariance by what the image shows around the joint (a small CNN on a "
                                              "patch there, and its heatmap's spread; detached); heatmap head, "
                                              "bottleneck_at head")
    local_form: str = opt("scale", choices=("scale", "affine"),
                          help="with local_covariance: scale (one factor per joint, both axes) or affine (per joint "
                               "a 2 x 2 lower-triangular map T, cov -> T cov T^T: the spread can grow along one "
                               "direction, e.g. along an occluded limb)")
    local_features: bool = opt(False, help="with local_covariance: the local term also reads the head's last "
                                            "activation pooled under each joint's heatmap (detached), beside the "
                                            "image patch")
    occlusion_head: bool = opt(False, help="predict each joint's chance of being hidden (COCO's v = 1, LSP's and "
                                            "MPII's occlusion flags, the synthetic occluders) from the heatmap head's "
                                            "trunk at the predicted joint, trained by train.occlusion_weight x BCE; "
                                            "with local_covariance, the local term reads it; heatmap head, "
                                            "bottleneck_at head")
    occlusion_neighbours: bool = opt(False, help="with occlusion_head and local_covariance: each joint's local "
                                                  "term also reads the largest occlusion logit among the joints the "
                                                  "skeleton links it to (an occluded wrist makes its elbow's label "
                                                  "less sure too)")
    use_hessian: bool = opt(False, help="add TIC's Hessian term (costly)")
    cov_floor: float = opt(1e-2, min=0.0, help="added to every variance, px^2")
    jacobian_chunk: int | None = opt(None, min=1, help="cotangents vmapped at once for TIC's Jacobian")
    feature_stride: int | None = opt(None, choices=(None, 4, 8, 16, 32),
                                     help="use the backbone's feature map at this stride (null: its last)")
    tic_eps_relative: bool = opt(True, help="TIC's eps1 measured against J's running scale (false: the earlier "
                                            "absolute eps1 that model files written before it load with)")


@dataclass
class PseudoLabelConfig:
    k: int = opt(64, min=2, help="nearest neighbours per label (>= 2J + 1 for full rank)")
    source: str = opt("bottleneck", choices=("bottleneck", "features", "file"),
                      help="bottleneck: the model's own z, refreshed; features: PCA of the backbone's pooled "
                           "features at stage start, then frozen; file: embeddings from `file`")
    file: str | None = opt(None, help="N x E .npy/.npz embeddings of the training set (source: file)")
    refresh_every: int = opt(1, min=1, help="refresh the bank every this many epochs (bottleneck source)")
    temperature: float | str | None = opt(1.0, min=0.0,
                                          help="softmax temperature over squared whitened Mahalanobis distances: "
                                               "a number (1: the paper's softmax(-d)) or 'median' (the median "
                                               "neighbour distance; null means the same)")
    effective_neighbours: float | None = opt(None, min=1.0,
                                             help="set each sample's temperature so that its weights count this "
                                                  "many effective neighbours (overrides temperature; at most k)")
    neighbours: str = opt("embedding", choices=("embedding", "joints"),
                          help="embedding: neighbours in z (the paper); joints: each joint's scale then rescaled to "
                               "what its own neighbours by the head's view of that joint say (heatmap head)")
    shrinkage: float = opt(0.1, min=0.0, max=1.0, help="shrink the embedding covariance towards its diagonal")
    floor: float = opt(1e-3, min=0.0, help="relative eigenvalue floor that keeps each label PD")
    features_dim: int = opt(64, min=1, help="PCA dimensions for source: features")
    labels_from: str = opt("targets", choices=LABELS_FROM,
                           help="targets: the covariance of the neighbours' targets (the paper); residuals: the "
                                "second moment of the neighbours' errors y - mean (bottleneck source only)")
    train_local_term: bool = opt(True, help="whether this stage trains the per-joint local term "
                                            "(model.local_covariance) on the labels too; false leaves it to the "
                                            "likelihood stages (labels from neighbours in z hold nothing of what the "
                                            "image shows around a joint)")


@dataclass
class StageConfig:
    loss: str = opt("nll", choices=LOSSES, help="mse (identity covariance), nll (Gaussian NLL), beta_nll, faithful "
                                              "(MSE for the mean, NLL of the detached residual), kl_calibrated and "
                                              "w2_bound (both read pseudo-labels), loss_pred (isotropic head)")
    epochs: int = opt(1, min=1, help="epochs of this stage")
    beta: float = opt(0.5, min=0.0, max=1.0, help="beta of beta_nll")
    pseudo_labels: PseudoLabelConfig = opt(factory=PseudoLabelConfig,
                                           help="the covariance pseudo-labels of w2_bound and kl_calibrated stages")


@dataclass
class TrainConfig:
    seed: int = opt(0, min=0, help="one seed for weights, data order and augmentation")
    device: str = opt("auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    lr: float = opt(1e-3, min=0.0, help="AdamW learning rate")
    weight_decay: float = opt(1e-4, min=0.0, help="AdamW weight decay (none on norms and biases)")
    schedule: str = opt("cosine", choices=("cosine", "plateau", "constant"),
                        help="after the warm-up: cosine to min_lr_ratio, steps down when the validation NLL stalls "
                             "(plateau), or constant")
    warmup_steps: int = opt(100, min=0, help="linear warm-up from 1% of lr")
    min_lr_ratio: float = opt(0.01, min=0.0, max=1.0, help="cosine floor as a fraction of lr")
    plateau_patience: int = opt(3, min=0, help="epochs without a better validation NLL before the lr drops")
    plateau_factor: float = opt(0.3, min=0.0, max=1.0, help="the lr's factor at each plateau step")
    grad_clip: float = opt(10.0, min=0.0, help="max gradient norm; 0 turns clipping off")
    heatmap_weight: float = opt(0.0, min=0.0,
                                help="weight of the heatmap cross-entropy (heatmap head) added to the stage loss")
    occlusion_weight: float = opt(5.0, min=0.0, help="weight of the occlusion head's binary cross-entropy on the "
                                                     "joints whose occlusion flag is known (model.occlusion_head)")
    cudnn_benchmark: bool = opt(False, help="on CUDA, let cuDNN time its convolution algorithms once for the fixed "
                                            "crop size (can be faster; a resumed run is then not bit-identical to an "
                                            "uninterrupted one)")
    amp: bool = opt(True, help="bf16 autocast on CUDA (covariance math stays float32); ignored on CPU")
    channels_last: bool = opt(True, help="train with channels-last convolution weights (faster in oneDNN "
                                         "on CPU and in cuDNN); model files keep the usual layout")
    max_bad_steps: int = opt(20, min=1, help="stop after this many non-finite steps in a row")
    max_steps_per_epoch: int | None = opt(None, min=1, help="cut epochs short (smoke tests, benchmarks)")
    progress: bool = opt(True, help="progress bars")
    log: list[str] = opt(factory=lambda: ["jsonl"], help="experiment logs: jsonl (metrics.jsonl, always written) and "
                                                         "tensorboard (out/tensorboard: the same numbers per epoch "
                                                         "and validation pictures; pip install "
                                                         "'pose-toss[tensorboard]')")


@dataclass
class Config:
    data: DataConfig = opt(factory=DataConfig, help="what is trained on and how it is cropped and augmented")
    model: ModelConfig = opt(factory=ModelConfig, help="the pose model and its covariance")
    train: TrainConfig = opt(factory=TrainConfig, help="optimiser, schedule, precision, stopping")
    # NLL-TIC alone: ahead of the two-stage W2 -> NLL-TIC recipe (configs/toss.yaml) in the measured sweep.
    stages: list[StageConfig] = opt(factory=lambda: [StageConfig(loss="nll", epochs=100)],
                                    help="the training stages in order, each a loss for some epochs (default: "
                                         "NLL with the model's covariance for 100 epochs)")

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def input_paths(self) -> list[str]:
        """The existing files and folders this config reads (data roots, pose and embedding files): an
        output directory must never hold one of them."""
        r = self.data.real
        roots = [r.mpii_root, r.lsp_root, r.lspet_root, r.coco_root, self.data.synthetic.poses_from,
                 self.data.skeleton, *(st.pseudo_labels.file for st in self.stages)]
        return [p for p in roots if p and os.path.exists(p)]

    def validate(self, source: str) -> None:
        if not self.stages:
            raise ConfigError(f"{source}: key 'stages': expected at least one stage")
        if not self.train.log or any(k not in LOG_KINDS for k in self.train.log):
            raise ConfigError(f"{source}: key 'train.log': expected a list of {' and '.join(LOG_KINDS)}, got "
                              f"{self.train.log!r}")
        if self.data.skeleton is not None:
            try:
                get_skeleton(self.data.skeleton)
            except (KeyError, ValueError, FileNotFoundError) as e:
                message = e.args[0] if isinstance(e, KeyError) and e.args else e
                raise ConfigError(f"{source}: key 'data.skeleton': {message}") from None
        cov = self.model.covariance
        for i, st in enumerate(self.stages):
            where = f"{source}: key 'stages.{i}.loss'"
            if st.loss == "loss_pred" and cov != "isotropic":
                raise ConfigError(f"{where}: loss_pred trains the isotropic head; expected model.covariance: "
                                  f"isotropic, got {cov!r}")
            if st.loss not in ("mse", "loss_pred") and cov in ("identity", "isotropic"):
                raise ConfigError(f"{where}: {st.loss} trains a covariance, but model.covariance is {cov!r}; "
                                  "expected tic, full or diagonal")
            temp = st.pseudo_labels.temperature
            if (isinstance(temp, str) and temp != "median") or (isinstance(temp, float) and not temp > 0):
                raise ConfigError(f"{source}: key 'stages.{i}.pseudo_labels.temperature': expected a number > 0 or "
                                  f"'median', got {temp!r}")
            if st.loss in PSEUDO_LABEL_LOSSES and st.pseudo_labels.source == "file" and not st.pseudo_labels.file:
                raise ConfigError(f"{source}: key 'stages.{i}.pseudo_labels.file': expected a path when "
                                  "source is 'file'")
            pl = st.pseudo_labels
            if pl.effective_neighbours is not None and pl.effective_neighbours > pl.k:
                raise ConfigError(f"{source}: key 'stages.{i}.pseudo_labels.effective_neighbours': expected at most "
                                  f"k = {pl.k}, got {pl.effective_neighbours}")
            if pl.neighbours == "joints" and (pl.source != "bottleneck" or self.model.head != "heatmap"
                                              or self.model.bottleneck_at != "head"):
                raise ConfigError(f"{source}: key 'stages.{i}.pseudo_labels.neighbours': joints reads the model's "
                                  "heatmaps at every refresh; expected source bottleneck with head heatmap and "
                                  "bottleneck_at head")
            if st.pseudo_labels.labels_from == "residuals" and st.pseudo_labels.source != "bottleneck":
                raise ConfigError(f"{source}: key 'stages.{i}.pseudo_labels.labels_from': residuals need the model's "
                                  f"current predictions, so source must be 'bottleneck', got "
                                  f"{st.pseudo_labels.source!r}")
        m = self.model
        if m.local_covariance and (m.head != "heatmap" or m.bottleneck_at != "head" or cov not in FITTED_COVARIANCES):
            raise ConfigError(f"{source}: key 'model.local_covariance': the local term reads each joint's heatmap and "
                              "adds to a fitted covariance; expected head heatmap, bottleneck_at head and covariance "
                              f"tic, full or diagonal, got {m.head}, {m.bottleneck_at}, {cov}")
        if m.occlusion_head and (m.head != "heatmap" or m.bottleneck_at != "head"):
            raise ConfigError(f"{source}: key 'model.occlusion_head': the occlusion head reads the heatmap head's "
                              f"trunk at each predicted joint; expected head heatmap and bottleneck_at head, got "
                              f"{m.head}, {m.bottleneck_at}")
        if m.occlusion_neighbours and not (m.occlusion_head and m.local_covariance):
            raise ConfigError(f"{source}: key 'model.occlusion_neighbours': the local term reads the linked joints' "
                              "occlusion logits; expected model.occlusion_head and model.local_covariance true, got "
                              f"{m.occlusion_head} and {m.local_covariance}")
        weights = self.data.synthetic.cue_kind_weights
        if not (all(w >= 0 for w in weights) and sum(weights) > 0):
            raise ConfigError(f"{source}: key 'data.synthetic.cue_kind_weights': expected 3 weights >= 0 (occluder, "
                              f"blur, fade) with a positive sum, got {list(weights)}")
        lo, hi = self.data.augment.scale
        if not 0 < lo <= hi:
            raise ConfigError(f"{source}: key 'data.augment.scale': expected (lo, hi) with 0 < lo <= hi, "
                              f"got {list(self.data.augment.scale)}")
        if self.data.input_size % self.data.heatmap_stride:
            raise ConfigError(f"{source}: key 'data.input_size': expected a multiple of heatmap_stride "
                              f"({self.data.heatmap_stride}), got {self.data.input_size}")


# --------------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML as people write configs: ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3``), and a key given
    twice in one mapping is an error instead of the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                lines = f"lines {seen[key] + 1} and {key_node.start_mark.line + 1}"
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice ({lines})",
                                                        key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(tp)]}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return str(tp)


# YAML scalars accepted for each scalar type (bools are not integers here, integers are numbers).
_SCALAR_CHECKS = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (lists to tuples, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    fail = ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError:
                pass
        raise fail
    if tp in _SCALAR_CHECKS:
        if not _SCALAR_CHECKS[tp](value):
            raise fail
        if tp is float:
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise fail
        return tuple(_coerce(a, v, _item(where, i)) for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail
        (a,) = typing.get_args(tp)
        return [_coerce(a, v, _item(where, i)) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported schema type {tp}")


def _item(where: str, i: int) -> str:
    """``"src: key 'stages'"`` -> ``"src: key 'stages.0'"``: list items are named like --set names them."""
    return f"{where[:-1]}.{i}'" if where.endswith("'") else f"{where}.{i}"


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = " and ".join(p for p in ((f">= {lo}" if lo is not None else ""),
                                          (f"<= {hi}" if hi is not None else "")) if p)
            raise ConfigError(f"{where}: expected {_describe(type(value))} {rng}, got {value!r}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    key_prefix = where.rsplit("key '", 1)[-1].rstrip("'") if "key '" in where else ""
    source = where.split(": key '")[0]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{key_prefix}.{key}" if key_prefix else str(key)
        here = f"{source}: key '{dotted}'"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{dotted}'; expected one of {sorted(fields)}")
        value = _coerce(hints[key], value, here)
        _check_range(fields[key], value, here)
        kwargs[key] = value
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected the form section.key=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: expected the form section.key=value")
    return key.strip(), raw


def apply_override(cfg: Any, item: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is read as YAML."""
    key, raw = _parse_override(item)
    source = f"--set {item}"
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{source}: key '{here}': expected a list index below {len(node)}")
            if last:
                raise ConfigError(f"{source}: key '{here}': replacing a whole list item is not supported")
            node = node[int(part)]
            continue
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{source}: key '{here}' is not a section")
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            raise ConfigError(f"{source}: unknown key '{here}'; expected one of {sorted(fields)}")
        if not last:
            node = getattr(node, part)
            continue
        tp = typing.get_type_hints(type(node))[part]
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: key '{key}': value is not valid YAML ({e})") from None
        # Strings stay strings: `--set x.path=001` must not become the integer 1.
        where = f"{source}: key '{key}'"
        if value is not None and _accepts_str(tp) and not isinstance(value, str):
            try:
                value = _coerce(tp, value, where)
            except ConfigError:
                value = raw
        value = _coerce(tp, value, where)
        _check_range(fields[part], value, where)
        setattr(node, part, value)


def _accepts_str(tp: Any) -> bool:
    return tp is str or str in typing.get_args(tp)


# The configs shipped with the package (the repository's configs/ is a link to this folder).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path`` when that file exists, else the shipped config it names: ``quick``, ``quick.yaml`` and
    ``configs/quick.yaml`` all name the package's ``configs/quick.yaml`` where no such file is at hand."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    if (len(p.parts) == 1 or (len(p.parts) == 2 and p.parts[0] == "configs")) and (PACKAGED_CONFIGS / name).is_file():
        return PACKAGED_CONFIGS / name
    shipped = ", ".join(sorted(f.stem for f in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {p} (the shipped configs, by name: {shipped})")


def load_config(path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = (),
                cls: type = Config) -> Any:
    """Load ``path`` (a file, or a shipped config's name such as ``quick``; the defaults when None), apply
    ``overrides``, validate, return the dataclass."""
    source = "defaults"
    data: dict = {}
    if path is not None:
        p = resolve_config_path(path)
        source = str(path)
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a text (UTF-8) YAML file: byte {e.start} is "
                              f"0x{e.object[e.start]:02x}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        data = loaded
    cfg = _build(cls, data, source)
    for item in overrides:
        apply_override(cfg, item)
    if hasattr(cfg, "validate"):
        cfg.validate(source if not overrides else f"{source} with --set {' '.join(overrides)}")
    return cfg


def config_to_dict(cfg: Any) -> dict:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically) so every output says how it was made."""
    atomic_write_text(path, dump_config(cfg))


# --------------------------------------------------------------------------------------------------
# The configuration reference (docs/configuration.md is this function's output; a test keeps it current)
# --------------------------------------------------------------------------------------------------


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(section)"
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            return yaml.safe_dump(config_to_dict(value), default_flow_style=True, width=1000).strip()
    else:
        return "required"
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _allowed_text(f: dataclasses.Field, tp: Any) -> str:
    meta = f.metadata
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join("null" if c is None else str(c) for c in meta["choices"]))
    if meta.get("min") is not None:
        parts.append(f">= {meta['min']:g}")
    if meta.get("max") is not None:
        parts.append(f"<= {meta['max']:g}")
    return "; ".join(parts) if parts else _describe(tp)


def configuration_reference() -> str:
    """Every config key as Markdown tables, one per section: its default, what it accepts and its help text,
    all read from the schema above (``docs/configuration.md`` is this text)."""
    out = ["# Configuration reference", "",
           "Generated from the schema in `pose_toss/config.py` (`python -c \"from pose_toss.config import "
           "configuration_reference as r; print(r(), end='')\" > docs/configuration.md`); a test fails when this "
           "file falls behind it. Keys are written `section.key` on the command line: `--set train.lr=1e-3`.", ""]

    def section(cls: type, prefix: str, title: str) -> None:
        hints = typing.get_type_hints(cls)
        rows, nested = [], []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                nested.append((tp, f"{prefix}{f.name}."))
                continue
            if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                nested.append((typing.get_args(tp)[0], f"{prefix}{f.name}.N."))
            help_text = f.metadata.get("help", "").replace("|", "\\|")
            allowed = _allowed_text(f, tp).replace("|", "\\|")
            rows.append(f"| `{prefix}{f.name}` | `{_default_text(f)}` | {allowed} | {help_text} |")
        out.extend([f"## {title}", "", "| key | default | accepts | what it does |", "| --- | --- | --- | --- |",
                    *rows, ""])
        for sub, sub_prefix in nested:
            section(sub, sub_prefix, f"`{sub_prefix.rstrip('.')}`")

    section(Config, "", "Top level")
    return "\n".join(out) + "\n"
