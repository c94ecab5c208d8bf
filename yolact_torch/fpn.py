"""Feature pyramid, as the original's FPN with the yolact configs' options (bilinear top-down,
padded 3x3 prediction convs with ReLU, P6/P7 as stride-2 convs on P5 without ReLU)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from yolact_torch.config import YolactConfig


class FPN(nn.Module):
    """in_channels: channels of the selected backbone stages, finest first (C3, C4, C5).

    forward(list of float32 [B, in_channels[i], H_i, W_i]) -> list of float32
    [B, cfg.fpn_features, H, W]: P3.. (one per input, same sizes) then cfg.fpn_num_downsample
    extra levels, each a stride-2 conv of the previous one.

    `lat_layers` is stored coarsest first (the original builds it over reversed(in_channels), and
    the official checkpoints keep that order); `pred_layers` likewise.
    """

    def __init__(self, in_channels: Sequence[int], cfg: YolactConfig):
        super().__init__()
        features = cfg.fpn_features
        self.lat_layers = nn.ModuleList(nn.Conv2d(c, features, kernel_size=1) for c in reversed(in_channels))
        self.pred_layers = nn.ModuleList(
            nn.Conv2d(features, features, kernel_size=3, padding=1) for _ in in_channels)
        self.downsample_layers = nn.ModuleList(
            nn.Conv2d(features, features, kernel_size=3, padding=1, stride=2)
            for _ in range(cfg.fpn_num_downsample))

    def forward(self, convouts: list[Tensor]) -> list[Tensor]:
        num = len(convouts)
        merged: list[Tensor] = [convouts[0]] * num  # placeholders, all overwritten below
        x = None
        for i, lat_layer in enumerate(self.lat_layers):
            j = num - 1 - i  # lat_layers[i] belongs to convouts[j]: coarsest first
            lateral = lat_layer(convouts[j])
            if x is None:
                x = lateral
            else:
                x = F.interpolate(x, size=lateral.shape[-2:], mode='bilinear', align_corners=False) + lateral
            merged[j] = x
        out = [F.relu(self.pred_layers[num - 1 - j](merged[j])) for j in range(num)]
        for downsample in self.downsample_layers:
            out.append(downsample(out[-1]))
        return out
