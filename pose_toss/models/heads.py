"""TIC-TAC bottleneck and keypoint heads.

The mean is a function of the embedding z: up(z) is added as a per-channel offset either to the
backbone's feature map (``bottleneck_at="features"``: the whole head lies between z and the mean) or to
the head's last pre-activation (``bottleneck_at="head"``: only the last activation, the 1x1 convolution
and the soft-argmax do). Each head splits into a ``trunk`` that does not see z and a ``tail`` that does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pose_toss.data.codec import soft_argmax


class Bottleneck(nn.Module):
    """Pooled features -> z (E dims) and z -> a per-channel offset added back to the features."""

    def __init__(self, channels: int, embed_dim: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(channels, embed_dim)
        self.up = nn.Linear(embed_dim, out_channels or channels)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.down(features.mean(dim=(2, 3)))

    def offset(self, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """up(z) shaped to add to ``like`` (B x C x H x W maps or B x C vectors)."""
        o = self.up(z)
        return o[:, :, None, None] if like.dim() == 4 else o


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

    def tail(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.up):  # the trunk ends on a batch norm: its ReLU lives here
            x = torch.relu(x if offset is None else x + offset)
        elif offset is not None:
            x = x + offset
        heat = self.final(x)
        coords = soft_argmax(heat, self.out_stride, beta=self.log_beta.exp())
        return coords.flatten(1), heat

    def forward(self, features: torch.Tensor, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset`` (B x C x 1 x 1) is added to the features before the trunk."""
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
