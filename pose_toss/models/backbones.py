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


class Backbone(nn.Module):
    """Images (B x 3 x S x S, normalised) -> the last feature map (B x C x S/stride x S/stride).

    ViTs run at the configured input size; timm lays their tokens out as a map.
    """

    def __init__(self, name: str, input_size: int, pretrained: bool | str = False) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"unknown timm backbone {name!r}; similar names: {close}")
        self.name = name
        kwargs = {"features_only": True, "out_indices": (-1,)}
        try:  # transformer-style models take the input size; convnets refuse the keyword
            self.body = _create(name, pretrained, img_size=input_size, **kwargs)
        except TypeError:
            self.body = _create(name, pretrained, **kwargs)
        info = self.body.feature_info
        self.channels = int(info.channels()[-1])
        self.stride = int(info.reduction()[-1])
        if input_size % self.stride:
            raise ValueError(f"input_size {input_size} is not a multiple of backbone {name!r}'s stride {self.stride}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[-1]
