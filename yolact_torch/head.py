"""The prediction head shared by all FPN levels (the original's PredictionModule with the yolact
configs' options: one upfeature conv, 3x3 output convs, tanh on the mask coefficients)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolact_torch.config import YolactConfig


class PredictionHead(nn.Module):
    """forward(x float32 [B, in_channels, H, W]) -> (loc [B, H*W*A, 4] box regression,
    conf [B, H*W*A, cfg.num_classes] class logits, coef [B, H*W*A, cfg.mask_dim] in -1..1),
    A = num_priors_per_location, rows ordered row, column, prior (the priors' order).
    """

    def __init__(self, in_channels: int, cfg: YolactConfig, num_priors_per_location: int):
        super().__init__()
        self.num_classes = cfg.num_classes
        self.mask_dim = cfg.mask_dim
        # A Sequential so the key is upfeature.0, as in the official checkpoints.
        self.upfeature = nn.Sequential(
            nn.Conv2d(in_channels, cfg.head_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        a = num_priors_per_location
        self.bbox_layer = nn.Conv2d(cfg.head_channels, a * 4, kernel_size=3, padding=1)
        self.conf_layer = nn.Conv2d(cfg.head_channels, a * cfg.num_classes, kernel_size=3, padding=1)
        self.mask_layer = nn.Conv2d(cfg.head_channels, a * cfg.mask_dim, kernel_size=3, padding=1)

    @staticmethod
    def _per_prior(x: Tensor, width: int) -> Tensor:
        # [B, A*width, H, W] -> [B, H*W*A, width]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.upfeature(x)
        loc = self._per_prior(self.bbox_layer(x), 4)
        conf = self._per_prior(self.conf_layer(x), self.num_classes)
        coef = torch.tanh(self._per_prior(self.mask_layer(x), self.mask_dim))
        return loc, conf, coef
