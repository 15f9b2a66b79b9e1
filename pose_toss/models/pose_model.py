"""The pose model: backbone -> bottleneck z -> decode(z, features) -> mean; covariance from z."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np
import torch
from torch import nn

from pose_toss.config import BOTTLENECK_AT, COVARIANCES, FITTED_COVARIANCES, HEADS, ModelConfig
from pose_toss.covariance import (
    heatmap_tail_jacobian,
    regression_tail_jacobian,
    transform_joint_rows,
    transform_joints,
)
from pose_toss.data.media import as_rgb_image
from pose_toss.data.transforms import (
    affine_covariance,
    affine_points,
    box_to_center_size,
    crop_affine,
    invert_affine,
)
from pose_toss.models.backbones import Backbone
from pose_toss.models.covariance_heads import (
    JointLocalScale,
    TICCovarianceHead,
    TICParts,
    create_covariance_head,
    eval_mode,
    heatmap_stats,
)
from pose_toss.models.heads import (
    Bottleneck,
    HeatmapHead,
    OcclusionHead,
    RegressionHead,
    neighbour_max,
    pooled_under_heatmaps,
)
from pose_toss.skeletons import Skeleton

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PoseOutput:
    mean: torch.Tensor  # B x 2J, input-crop pixels, [x0, y0, x1, y1, ...]
    cov: torch.Tensor | None  # B x 2J x 2J, symmetric positive definite, pixels^2 (None: not asked for)
    embedding: torch.Tensor  # B x E
    heatmaps: torch.Tensor | None = None  # B x J x S/4 x S/4 (heatmap head)
    tic: TICParts | None = None  # J, eps1, L of a TIC covariance (diagnostics: how much of it J carries)
    occlusion_logits: torch.Tensor | None = None  # B x J, each joint's logit of being hidden (occlusion head)


class PoseModel(nn.Module):
    """Takes images as B x 3 x S x S floats in [0, 1] (normalisation happens inside).

    Built from the model section of a config (``config.ModelConfig``, every option under the name it has there
    and in the heads), the skeleton's joint count, the input size and the heatmap stride; ``self.config`` is
    that section, which model files store."""

    def __init__(self, config: ModelConfig, num_joints: int, input_size: int = 256, heatmap_stride: int = 4) -> None:
        super().__init__()
        config = replace(config)  # this model's own copy
        for key, allowed in (("bottleneck_at", BOTTLENECK_AT), ("head", HEADS), ("covariance", COVARIANCES)):
            if getattr(config, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(config, key)!r}")
        if not isinstance(config.embed_dim, int) or config.embed_dim < 1:
            raise ValueError(f"embed_dim must be an integer >= 1, got {config.embed_dim!r}")
        if num_joints < 1:
            raise ValueError(f"num_joints must be >= 1, got {num_joints}")
        if config.local_covariance and (config.head != "heatmap" or config.bottleneck_at != "head"):
            raise ValueError("local_covariance reads each joint's heatmap: it needs head 'heatmap' with bottleneck_at "
                             f"'head', got head {config.head!r}, bottleneck_at {config.bottleneck_at!r}")
        if config.occlusion_head and (config.head != "heatmap" or config.bottleneck_at != "head"):
            raise ValueError("occlusion_head reads the heatmap head's trunk at each predicted joint: it needs head "
                             f"'heatmap' with bottleneck_at 'head', got head {config.head!r}, bottleneck_at "
                             f"{config.bottleneck_at!r}")
        if config.local_covariance and config.covariance not in FITTED_COVARIANCES:
            raise ValueError(f"local_covariance scales a fitted covariance ({', '.join(FITTED_COVARIANCES)}), not "
                             f"{config.covariance!r}")
        if config.occlusion_neighbours and not (config.occlusion_head and config.local_covariance):
            raise ValueError("occlusion_neighbours feeds the linked joints' occlusion logits to the local term: it "
                             "needs occlusion_head and local_covariance")
        if config.head == "regression" and config.bottleneck_at == "head":
            # z enters the MLP's hidden layer, a vector: a per-unit offset there is not lost to a softmax.
            config.bottleneck_grid = 1
        self.config = config
        self.bottleneck_at = config.bottleneck_at
        self.num_joints = num_joints
        self.input_size = input_size
        self.heatmap_stride = heatmap_stride
        self.backbone = Backbone(config.backbone, input_size, config.pretrained, config.feature_stride)
        c = self.backbone.channels
        if config.head == "heatmap":
            self.head = HeatmapHead(c, num_joints, self.backbone.stride, config.deconv_channels, heatmap_stride)
        else:
            self.head = RegressionHead(c, num_joints, input_size)
        self.bottleneck = Bottleneck(c, config.embed_dim, self.head.out_channels if config.bottleneck_at == "head"
                                     else c, config.bottleneck_grid)
        # Initial spread: a few pixels on the crop.
        self.cov_head = create_covariance_head(config, num_joints, init_std=input_size / 32.0)
        self.occlusion_head = OcclusionHead(self.head.out_channels, num_joints) if config.occlusion_head else None
        # The local term reads the head's activation under each joint (local_features) and the occlusion logit.
        local_inputs = ((self.head.out_channels if config.local_features else 0) + (1 if config.occlusion_head else 0)
                        + (1 if config.occlusion_neighbours else 0))
        self.local_scale = (JointLocalScale(num_joints, cov_hidden=config.cov_hidden,
                                            outputs=3 if config.local_form == "affine" else 1,
                                            feature_dim=local_inputs)
                            if config.local_covariance else None)
        # TIC's J with z at the heatmap head's last layer: closed form (False: torch.func reverse passes,
        # the reference the closed form is tested against).
        self.closed_form_jacobian = True
        # The joint set the model was trained on (set by the trainer, stored in model files): names, flips, OKS.
        self.skeleton: Skeleton | None = None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def file_metadata(self) -> dict:
        """What a model file stores to rebuild this model: its model section and the data-side sizes."""
        meta = {"model": asdict(self.config), "num_joints": self.num_joints, "input_size": self.input_size,
                "heatmap_stride": self.heatmap_stride}
        if self.skeleton is not None:
            meta["skeleton"] = self.skeleton.to_dict()
        return meta

    # -- the pieces -------------------------------------------------------------------------------

    def check_images(self, images: torch.Tensor) -> None:
        s = self.input_size
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (s, s):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected images as a B x 3 x {s} x {s} float tensor in [0, 1], got {shape}")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> what the backbone (and the local scale) read: ImageNet-normalised."""
        self.check_images(images)
        return (images - self.pixel_mean) / self.pixel_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(images))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.bottleneck.embed(features)

    def decoder_input(self, features: torch.Tensor) -> torch.Tensor:
        """What ``decode`` combines with z: the features themselves, or the head's trunk output when
        z enters at the head's last layer."""
        return features if self.bottleneck_at == "features" else self.head.trunk(features)

    def decode_all(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, heatmaps) from z and ``decoder_input(features)``."""
        if self.bottleneck_at == "features":
            return self.head(context, self.bottleneck.offset(z, context))
        return self.head.tail(context, self.bottleneck.offset(z, context))

    def decode(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The mean (B x 2J) as a function of the embedding: what TIC's Jacobian differentiates."""
        return self.decode_all(z, context)[0].float()

    def covariance(self, z: torch.Tensor, features: torch.Tensor, context: torch.Tensor | None = None,
                   images: torch.Tensor | None = None) -> tuple[torch.Tensor, TICParts | None]:
        """(B x D x D covariance, TIC's parts or None). ``images`` (normalised) feed the local scale."""
        if self.bottleneck_at == "head" and (self.training or context is None) and (
                self.local_scale is not None or isinstance(self.cov_head, TICCovarianceHead)):
            # Batch statistics in the trunk must not couple samples in J or the local scale: in training the
            # trunk is re-run in eval mode for them.
            with torch.no_grad(), eval_mode((self.head,)):
                context = self.head.trunk(features)
        if not isinstance(self.cov_head, TICCovarianceHead):
            cov, parts = self.cov_head(z), None
        elif self.bottleneck_at == "features":
            parts = self.cov_head.parts(z, self.decode, features, eval_modules=(self.bottleneck, self.head))
            cov = self.cov_head.assemble(parts)
        else:  # J passes only through the head's tail (no batch norm there)
            parts = self.cov_head.parts(z, self.decode, context,
                                        jacobian_fn=self.tail_jacobian if self.uses_closed_form_jacobian else None)
            cov = self.cov_head.assemble(parts)
        if self.local_scale is not None:
            if images is None:
                raise ValueError("a model with local_covariance needs the images for its covariance")
            local = self.local_log_scale(z, context, images)
            cov = transform_joints(cov, local)
            if parts is not None:  # J as it enters the transformed covariance (its diagnostics read it there)
                parts = replace(parts, jacobian=transform_joint_rows(parts.jacobian, local))
        return cov, parts

    def local_log_scale(self, z: torch.Tensor, context: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Each joint's local term of the covariance (``JointLocalScale``: B x J log-scales, or B x J x 3 maps), from
        the normalised images around the joints the tail predicts from ``context``, their heatmaps and, with
        ``local_features``, the head's activation pooled under them, with ``occlusion_head`` each joint's occlusion
        logit (all detached)."""
        with torch.no_grad():
            joints, heat, activation = self.head.tail_parts(context, self.bottleneck.offset(z, context))
            b, j = heat.shape[:2]
            joints = joints.float().reshape(b, j, 2)
            prob = self.head.distribution(heat)
            features = self.local_scale_features(prob, activation, context, joints)
        return self.local_scale(images, joints, prob, self.head.out_stride, features)

    def local_scale_features(self, prob: torch.Tensor, activation: torch.Tensor, context: torch.Tensor,
                             joints: torch.Tensor) -> torch.Tensor | None:
        """What the local term reads beside its patch and heatmap statistics (B x J x F, or None): with
        ``local_features`` the head's ``activation`` pooled under each joint's heatmap distribution ``prob``, with
        ``occlusion_head`` each joint's occlusion logit at ``joints``, with ``occlusion_neighbours`` the largest logit
        among the joints the skeleton links it to."""
        extra = [pooled_under_heatmaps(prob, activation)] if self.config.local_features else []
        if self.occlusion_head is not None:
            logits = self.occlusion_logits(context, joints).clamp(-10.0, 10.0)
            extra.append(logits[..., None])
            if self.config.occlusion_neighbours:
                extra.append(neighbour_max(logits, self.skeleton_links())[..., None])
        return torch.cat(extra, -1) if extra else None

    def skeleton_links(self) -> torch.Tensor:
        """J x J bool: which joints the model's skeleton links (``Skeleton.link_matrix``)."""
        if self.skeleton is None or self.skeleton.num_joints != self.num_joints:
            raise ValueError("occlusion_neighbours reads the skeleton's limbs: set the model's skeleton "
                             f"(model.skeleton = a Skeleton of its {self.num_joints} joints) before predicting")
        return torch.from_numpy(self.skeleton.link_matrix)

    def occlusion_logits(self, context: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """B x J logits of each joint being hidden (``OcclusionHead``), read from the trunk's activation
        (``context`` after its ReLU, without z) at ``joints`` (B x J x 2 input pixels)."""
        return self.occlusion_head(self.head.tail_activation(context), joints, self.input_size)

    def joint_descriptors(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """What the head sees at each joint (B x J x (C + 5), detached): its last activation pooled under the
        joint's own heatmap, and the heatmap's spread (``heatmap_stats``). Pseudo-labels find per-joint
        neighbours on it (``pseudo_labels.joint_scaled_labels``)."""
        if not isinstance(self.head, HeatmapHead) or self.bottleneck_at != "head":
            raise ValueError("joint descriptors read each joint's heatmap: they need head 'heatmap' with "
                             "bottleneck_at 'head'")
        with torch.no_grad():
            _, heat, activation = self.head.tail_parts(context, self.bottleneck.offset(z, context))
            prob = self.head.distribution(heat)
            return torch.cat([pooled_under_heatmaps(prob, activation), heatmap_stats(prob, self.head.out_stride)], -1)

    @property
    def uses_closed_form_jacobian(self) -> bool:
        """Whether TIC's J is taken by ``tail_jacobian`` (heatmap head, z at its last layer) rather than by
        torch.func's reverse passes."""
        return self.closed_form_jacobian and self.bottleneck_at == "head" and isinstance(self.head, HeatmapHead)

    def tail_jacobian(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``d decode(z, context) / d z`` in closed form with z at the head (``heatmap_tail_jacobian``,
        ``regression_tail_jacobian``): equal to the autograd Jacobian, without one backward pass per output."""
        if self.bottleneck_at != "head":
            raise ValueError("a closed-form J needs z at the head's last layer (bottleneck_at: head)")
        b, h = self.bottleneck, self.head
        if isinstance(h, HeatmapHead):
            return heatmap_tail_jacobian(z, context, b.up.weight, b.up.bias, b.grid, h.final.weight, h.final.bias,
                                         h.log_beta.exp(), h.out_stride, relu=len(h.up) > 0)
        return regression_tail_jacobian(z, context, b.up.weight, b.up.bias, h.out.weight, float(h.input_size))

    def forward(self, images: torch.Tensor, with_covariance: bool = True) -> PoseOutput:
        """``with_covariance=False`` skips the covariance (``cov`` is None): mean-only objectives."""
        normalised = self.normalise(images)
        feats = self.backbone(normalised)
        z = self.embed(feats)
        cov, parts = None, None
        if self.training:
            # J first: it runs the decoder in eval mode, before this batch updates the running statistics.
            if with_covariance:
                cov, parts = self.covariance(z, feats, images=normalised)
            context = self.decoder_input(feats)
        else:
            context = self.decoder_input(feats)
            if with_covariance:
                cov, parts = self.covariance(z, feats, context, images=normalised)
        mean, heat = self.decode_all(z, context)
        mean = mean.float()
        occlusion = (self.occlusion_logits(context, mean.detach().reshape(len(mean), -1, 2))
                     if self.occlusion_head is not None else None)
        if cov is not None:
            # A sample whose mean or covariance is not finite (NaN pixels, a diverged model) gets NaN for both:
            # never a finite covariance beside a NaN mean. (Selected, without a device sync.)
            ok = torch.isfinite(mean).all(-1) & torch.isfinite(cov).flatten(1).all(-1)
            mean = torch.where(ok[:, None], mean, torch.nan)
            cov = torch.where(ok[:, None, None], cov, torch.nan)
        return PoseOutput(mean, cov, z, heat, parts, occlusion)

    # -- inference on whole images ------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: np.ndarray | Sequence[np.ndarray], boxes: Sequence | None = None,
                padding: float = 1.25, batch_size: int = 32) -> list[dict]:
        """Joints and covariances in original-image pixels.

        ``images``: one H x W x 3 uint8 RGB array or a list of them (a float array is refused). ``boxes``: None
        (the whole image is the person) or, per image, an N x 4 array of ``[x, y, w, h]`` person boxes.
        Returns, per image, ``{"joints": N x J x 2, "cov": N x 2J x 2J, "boxes": N x 4}`` (numpy), and with an
        occlusion head ``"occluded"`` (N x J, each joint's probability of being hidden).
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
            boxes = None if boxes is None else [boxes]
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"got {len(boxes)} box lists for {len(images)} images")
        crops, affines, owners, all_boxes = [], [], [], []
        for i, img in enumerate(images):
            img = as_rgb_image(img, source=f"image {i}")  # a float image is refused, not read as 0-255
            h, w = img.shape[:2]
            if boxes is None:
                bxs = np.array([[0.0, 0.0, w, h]])
            else:
                try:
                    bxs = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
                except (TypeError, ValueError):
                    raise ValueError(f"boxes of image {i}: expected N x 4 numbers [x, y, w, h], got {boxes[i]!r}"
                                     ) from None
                bad = ~(np.isfinite(bxs).all(1) & (bxs[:, 2] > 0) & (bxs[:, 3] > 0))
                if bad.any():
                    raise ValueError(f"boxes of image {i}: box {int(np.flatnonzero(bad)[0])} is "
                                     f"{bxs[bad][0].tolist()}; expected finite [x, y, w, h] with w, h > 0")
            all_boxes.append(bxs)
            for box in bxs:
                center, size = box_to_center_size(box, 1.0 if boxes is None else padding)
                a = crop_affine(center, size, self.input_size)
                crops.append(cv2.warpAffine(img, a, (self.input_size,) * 2, flags=cv2.INTER_LINEAR))
                affines.append(a)
                owners.append(i)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        means, covs, hidden = [], [], []
        try:
            for k in range(0, len(crops), batch_size):
                batch = torch.from_numpy(np.stack(crops[k:k + batch_size])).to(device)
                out = self(batch.permute(0, 3, 1, 2).float() / 255.0)
                means.append(out.mean.double().cpu().numpy())
                covs.append(out.cov.double().cpu().numpy())
                if out.occlusion_logits is not None:
                    hidden.append(torch.sigmoid(out.occlusion_logits.double()).cpu().numpy())
        finally:
            self.train(was_training)
        mean = np.concatenate(means) if means else np.zeros((0, 2 * self.num_joints))
        cov = np.concatenate(covs) if covs else np.zeros((0, 2 * self.num_joints, 2 * self.num_joints))
        keys = ("joints", "cov") + (("occluded",) if self.occlusion_head is not None else ())
        hidden = np.concatenate(hidden) if hidden else np.zeros((0, self.num_joints))
        results = [{**{k: [] for k in keys}, "boxes": b} for b in all_boxes]
        for n, (a, i) in enumerate(zip(affines, owners, strict=True)):
            inv = invert_affine(a)  # A^-1 for the points, A^-1 S A^-T for the covariance
            results[i]["joints"].append(affine_points(inv, mean[n].reshape(-1, 2)))
            results[i]["cov"].append(affine_covariance(inv, cov[n]))
            if "occluded" in results[i]:
                results[i]["occluded"].append(hidden[n])
        j = self.num_joints
        empty = {"joints": (0, j, 2), "cov": (0, 2 * j, 2 * j), "occluded": (0, j)}
        for r in results:
            for k in keys:
                r[k] = np.stack(r[k]) if r[k] else np.zeros(empty[k])
        return results


def build_pose_model(backbone: str = "resnet18", num_joints: int = 14, head: str = "heatmap", embed_dim: int = 64,
                     covariance: str = "tic", input_size: int = 256, pretrained: bool | str = False,
                     heatmap_stride: int = 4, **options) -> PoseModel:
    """Create a pose model on a timm backbone (the ``timm.create_model`` of this package).

    ``backbone``: any timm name with ``features_only`` (resnet*, hrnet_w32, convnext_*) or a ViT
    (``vit_small_patch16_224``, run at ``input_size``). ``pretrained``: False, a local weights file,
    or True (downloads from timm's hub). ``heatmap_stride``: 4 (SimpleBaseline) or 8 (half the
    deconvolutions). Every other option is a key of the config's model section, under the same name
    (``config.ModelConfig``, whose ``help`` says what each does; e.g. ``deconv_channels``, ``cov_hidden``,
    ``bottleneck_at``, ``bottleneck_grid``, ``local_covariance``, ``feature_stride``)."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"build_pose_model: unknown model options {unknown}; the options are {sorted(known)}")
    config = ModelConfig(backbone=backbone, head=head, embed_dim=embed_dim, covariance=covariance,
                         pretrained=pretrained, **options)
    return PoseModel(config, num_joints, input_size, heatmap_stride)
