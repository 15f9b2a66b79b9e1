"""TIC-TAC bottleneck and keypoint heads.

The mean is a function of the embedding z: up(z) is a spatially varying map added either to the
backbone's feature map (``bottleneck_at="features"``: the whole head lies between z and the mean) or to
the head's last pre-activation (``bottleneck_at="head"``: only the last activation, the 1x1 convolution
and the soft-argmax do). Each head splits into a ``trunk`` that does not see z and a ``tail`` that does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pose_toss.data.codec import soft_argmax


class Bottleneck(nn.Module):
    """z (E dims) from the feature map pooled to ``grid x grid``, and z back to a ``grid x grid`` map per
    channel, resized (bilinear) to whatever it is added to.

    The map must vary over space for TIC's Jacobian to mean anything: a per-channel constant before a
    ReLU and a soft-argmax only shifts each heatmap's logits uniformly, which the softmax ignores
    (measured: J of rank about 6 of 28, 0.01 % of the covariance). ``grid=1`` is that earlier
    per-channel design, kept so that model files written with it load as what they were.
    """

    def __init__(self, channels: int, embed_dim: int, out_channels: int | None = None, grid: int = 4) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"bottleneck grid must be >= 1, got {grid}")
        self.grid = grid
        self.out_channels = out_channels or channels
        self.down = nn.Linear(channels * grid * grid, embed_dim)
        self.up = nn.Linear(embed_dim, self.out_channels * grid * grid)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        if self.grid == 1:
            return self.down(features.mean(dim=(2, 3)))
        return self.down(F.adaptive_avg_pool2d(features, self.grid).flatten(1))

    def offset(self, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """up(z) shaped to add to ``like`` (B x C x H x W maps, or B x C vectors when ``grid`` is 1)."""
        o = self.up(z)
        if like.dim() == 2:
            if self.grid != 1:
                raise ValueError(f"a grid {self.grid} bottleneck adds maps, not vectors; use grid 1 for vector inputs")
            return o
        if self.grid == 1:
            return o[:, :, None, None]
        o = o.reshape(z.shape[0], self.out_channels, self.grid, self.grid)
        return F.interpolate(o, size=like.shape[-2:], mode="bilinear", align_corners=False)


class HeatmapHead(nn.Module):
    """SimpleBaseline: deconvolutions (x2 each) from the backbone stride to stride 4, 1x1 to heatmaps,
    then soft-argmax to input-pixel coordinates. ``trunk``: everything before the last ReLU;
    ``tail(x, offset)``: ReLU(x + offset), the 1x1 convolution and the soft-argmax."""

    def __init__(self, channels: int, num_joints: int, in_stride: int, deconv_channels: int = 128,
                 out_stride: int = 4) -> None:
        super().__init__()
        n_up = int(round(math.log2(in_stride / out_stride)))
        if n_up < 0 or 2**n_up * out_stride != in_stride:
            raise ValueError(f"backbone stride {in_stride} cannot be brought to stride {out_stride} by x2 steps")
        layers: list[nn.Module] = []
        c = channels
        for i in range(n_up):
            layers += [nn.ConvTranspose2d(c, deconv_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_channels)]
            if i < n_up - 1:
                layers.append(nn.ReLU(inplace=True))
            c = deconv_channels
        self.up = nn.Sequential(*layers)
        self.out_channels = c
        self.final = nn.Conv2d(c, num_joints, 1)
        self.out_stride = out_stride
        # A learnt temperature: sharp maps make the soft-argmax a near argmax.
        self.log_beta = nn.Parameter(torch.tensor(0.0))

    def trunk(self, features: torch.Tensor) -> torch.Tensor:
        return self.up(features)

    def tail_activation(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """What the 1x1 convolution turns into heatmaps: ReLU(x + offset) (the trunk ends on a batch norm)."""
        if len(self.up):  # the trunk ends on a batch norm: its ReLU lives here
            return torch.relu(x if offset is None else x + offset)
        return x if offset is None else x + offset

    def tail_parts(self, x: torch.Tensor, offset: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(joints B x 2J, heatmaps, the activation they were made from)."""
        activation = self.tail_activation(x, offset)
        heat = self.final(activation)
        return soft_argmax(heat, self.out_stride, beta=self.log_beta.exp()).flatten(1), heat, activation

    def tail(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        coords, heat, _ = self.tail_parts(x, offset)
        return coords, heat

    def distribution(self, heat: torch.Tensor) -> torch.Tensor:
        """Each joint's heatmap as the distribution the soft-argmax takes its mean under (B x J x H x W, float32)."""
        b, j = heat.shape[:2]
        return torch.softmax(self.log_beta.exp() * heat.float().reshape(b, j, -1), -1).reshape(heat.shape)

    def forward(self, features: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset`` (B x C x H x W, or broadcastable to it) is added to the features before the trunk."""
        return self.tail(self.trunk(features if offset is None else features + offset))


class RegressionHead(nn.Module):
    """Pooled features -> MLP -> 2J coordinates (input pixels, centred on the crop). ``trunk``: the
    hidden pre-activation; ``tail(x, offset)``: ReLU(x + offset) and the output layer."""

    def __init__(self, channels: int, num_joints: int, input_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.hidden = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, 2 * num_joints)
        self.out_channels = hidden
        self.input_size = input_size

    def trunk(self, features: torch.Tensor) -> torch.Tensor:
        return self.hidden(features.mean(dim=(2, 3)).float())

    def tail(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        out = self.out(torch.relu(x if offset is None else x + offset))
        return (out + 0.5) * self.input_size - 0.5, None

    def forward(self, features: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        return self.tail(self.trunk(features if offset is None else features + offset))


def pooled_under_heatmaps(prob: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """Each joint's activation averaged under its heatmap distribution: ``prob`` B x J x H x W (summing to 1 per
    joint), ``activation`` B x C x H x W -> B x J x C, in float32."""
    b, j = prob.shape[:2]
    return prob.reshape(b, j, -1).float() @ activation.float().reshape(b, activation.shape[1], -1).transpose(1, 2)


def neighbour_max(values: torch.Tensor, links: torch.Tensor, empty: float = -10.0) -> torch.Tensor:
    """B x J ``values`` -> B x J: each joint's largest value among the joints ``links`` (J x J bool) joins it to;
    ``empty`` for a joint linked to none. A mask and a max, so it exports to ONNX as it runs."""
    linked = links.to(values.device)[None]
    return torch.where(linked, values[:, None, :], torch.full_like(values[:, None, :], empty)).amax(-1)


def sample_at_joints(activation: torch.Tensor, joints: torch.Tensor, input_size: int) -> torch.Tensor:
    """A B x C x H x W map read (bilinearly) at B x J x 2 input-pixel points -> B x J x C. Pixel centres line up as
    the soft-argmax puts them: cell i of a stride-s map sits at input pixel (i + 0.5) s - 0.5."""
    grid = (joints.to(activation.dtype) + 0.5) / input_size * 2 - 1
    return F.grid_sample(activation, grid[:, :, None], align_corners=False)[..., 0].transpose(1, 2)


class OcclusionHead(nn.Module):
    """Each joint's logit of being hidden (labelled but not visible: COCO's v = 1), from the heatmap head's trunk
    activation read at the joint's predicted position through a small MLP whose last layer is the joint's own (as
    MMPose's visibility head, without its pooling over the whole map: a hidden wrist shows where the wrist is).
    The positions are detached; the activation is not, so its loss also trains the trunk and the backbone."""

    def __init__(self, channels: int, num_joints: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Linear(channels, hidden)
        self.weight = nn.Parameter(torch.randn(num_joints, hidden) / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.full((num_joints,), -2.0))  # few joints are hidden: start near 12 %

    def forward(self, activation: torch.Tensor, joints: torch.Tensor, input_size: int) -> torch.Tensor:
        """``activation`` B x C x H x W, ``joints`` B x J x 2 (input pixels) -> B x J logits (float32)."""
        at_joint = sample_at_joints(activation.float(), joints.detach().float(), input_size)
        with torch.autocast(device_type=activation.device.type, enabled=False):
            h = F.gelu(self.hidden(at_joint.float()))
            return (h * self.weight).sum(-1) + self.bias
