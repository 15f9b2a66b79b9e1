"""TIC-TAC bottleneck and keypoint heads. The mean is ``decode(z, features)``: up(z) is added to the
feature map before the head, so the Jacobian of the mean w.r.t. z is well defined."""

from __future__ import annotations

import math

import torch
from torch import nn

from pose_toss.data.codec import soft_argmax


class Bottleneck(nn.Module):
    """Pooled features -> z (E dims) and z -> a per-channel offset added back to the features."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(channels, embed_dim)
        self.up = nn.Linear(embed_dim, channels)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.down(features.mean(dim=(2, 3)))

    def inject(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return features + self.up(z)[:, :, None, None]


class HeatmapHead(nn.Module):
    """SimpleBaseline: deconvolutions (x2 each) from the backbone stride to stride 4, 1x1 to heatmaps,
    then soft-argmax to input-pixel coordinates."""

    def __init__(self, channels: int, num_joints: int, in_stride: int, deconv_channels: int = 128,
                 out_stride: int = 4) -> None:
        super().__init__()
        n_up = int(round(math.log2(in_stride / out_stride)))
        if n_up < 0 or 2**n_up * out_stride != in_stride:
            raise ValueError(f"backbone stride {in_stride} cannot be brought to stride {out_stride} by x2 steps")
        layers: list[nn.Module] = []
        c = channels
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(c, deconv_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            c = deconv_channels
        self.up = nn.Sequential(*layers)
        self.final = nn.Conv2d(c, num_joints, 1)
        self.out_stride = out_stride
        # A learnt temperature: sharp maps make the soft-argmax a near argmax.
        self.log_beta = nn.Parameter(torch.tensor(0.0))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat = self.final(self.up(features))
        coords = soft_argmax(heat, self.out_stride, beta=self.log_beta.exp())
        return coords.flatten(1), heat


class RegressionHead(nn.Module):
    """Pooled features -> MLP -> 2J coordinates (input pixels, centred on the crop)."""

    def __init__(self, channels: int, num_joints: int, input_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * num_joints))
        self.input_size = input_size

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = self.mlp(features.mean(dim=(2, 3)).float())
        return (out + 0.5) * self.input_size - 0.5, None
