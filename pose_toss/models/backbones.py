"""timm backbones as feature-map extractors through ``features_only`` (CNNs, HRNet, ConvNeXt, ViTs)."""

from __future__ import annotations

import os

import timm
import torch
from torch import nn


def _create(name: str, pretrained: bool | str, **kwargs) -> nn.Module:
    if pretrained is True:
        return timm.create_model(name, pretrained=True, **kwargs)
    if pretrained in (False, None, "", "false", "False"):
        return timm.create_model(name, pretrained=False, **kwargs)
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path} (pretrained is False, True, or a path)")
    # timm loads a local file through the pretrained config; nothing is downloaded.
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)


def _build(name: str, pretrained: bool | str, input_size: int, out_indices: tuple) -> nn.Module:
    kwargs = {"features_only": True, "out_indices": out_indices}
    try:  # transformer-style models take the input size; convnets refuse the keyword
        return _create(name, pretrained, img_size=input_size, **kwargs)
    except TypeError:
        return _create(name, pretrained, **kwargs)


class Backbone(nn.Module):
    """Images (B x 3 x S x S, normalised) -> one feature map (B x C x S/stride x S/stride).

    The last stage by default; ``feature_stride`` (e.g. 16) takes the stage at that stride instead and
    drops the ones after it: small inputs keep a usable map (4 x 4 -> 8 x 8 at 128 px) and the
    network gets cheaper. ViTs run at the configured input size; timm lays their tokens out as a map.
    """

    def __init__(self, name: str, input_size: int, pretrained: bool | str = False,
                 feature_stride: int | None = None) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"unknown timm backbone {name!r}; similar names: {close}")
        self.name = name
        out_index = -1
        if feature_stride is not None:
            strides = [int(r) for r in _build(name, False, input_size, (0, 1, 2, 3, 4)).feature_info.reduction()]
            if feature_stride not in strides:
                raise ValueError(f"backbone {name!r} has feature maps at strides {strides}, not {feature_stride}")
            out_index = max(i for i, r in enumerate(strides) if r == feature_stride)
        self.body = _build(name, pretrained, input_size, (out_index,))
        info = self.body.feature_info
        self.channels = int(info.channels()[-1])
        self.stride = int(info.reduction()[-1])
        if input_size % self.stride:
            raise ValueError(f"input_size {input_size} is not a multiple of backbone {name!r}'s stride {self.stride}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[-1]
