"""Prior (anchor) boxes, reproducing the original's PredictionModule.make_priors exactly.

Order: FPN level (P3..P7), then row, column, then (scale, aspect ratio) as the config lists them.
Each prior is (cx, cy, w, h) relative to the input: cx = (column + 0.5) / level_width, and with
pixel scales w = scale * sqrt(aspect_ratio) / max_size, h = scale / sqrt(aspect_ratio) / max_size.
The official configs keep the original's square anchors (h = w, "backward compatibility with a
bug"), so the three aspect ratios give three square priors of different sizes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from yolact_torch.backbones import stage_sizes
from yolact_torch.backbones.resnet import conv_output_size
from yolact_torch.config import YolactConfig


def feature_sizes(cfg: YolactConfig) -> list[tuple[int, int]]:
    """(height, width) of each FPN level (P3.., the selected stages then the stride-2 extra levels)
    for a cfg.max_size x cfg.max_size input, by the conv arithmetic."""
    stages = stage_sizes(cfg.backbone, cfg.max_size)
    sizes = [stages[i] for i in cfg.backbone.selected_layers]
    for _ in range(cfg.fpn_num_downsample):
        sizes.append(conv_output_size(sizes[-1], 3, 2, 1))
    return [(s, s) for s in sizes]


def priors_per_location(cfg: YolactConfig) -> int:
    """Priors at every feature-map cell; the one prediction head is shared by all levels, so every
    level must have the same number."""
    counts = {len(scales) * sum(len(ars) for ars in aspect_ratios)
              for scales, aspect_ratios in zip(cfg.backbone.pred_scales, cfg.backbone.pred_aspect_ratios)}
    if len(counts) != 1:
        raise ValueError(f'config {cfg.name}: levels have different prior counts {sorted(counts)}; the '
                         'shared prediction head needs the same count at every level')
    return counts.pop()


def _prior_size(scale: float, aspect_ratio: float, level_hw: tuple[int, int], cfg: YolactConfig) -> tuple[float, float]:
    # Python floats (double) in the original's operation order, so the float32 result is identical.
    bcfg = cfg.backbone
    if not bcfg.preapply_sqrt:
        aspect_ratio = math.sqrt(aspect_ratio)
    if bcfg.use_pixel_scales:
        w = scale * aspect_ratio / cfg.max_size
        h = scale / aspect_ratio / cfg.max_size
    else:
        w = scale * aspect_ratio / level_hw[1]
        h = scale / aspect_ratio / level_hw[0]
    if bcfg.use_square_anchors:
        h = w
    return w, h


def make_priors(cfg: YolactConfig) -> Tensor:
    """All priors: float32 [P, 4] (cx, cy, w, h), relative 0..1, in the original's order."""
    levels = []
    for level_hw, scales, aspect_ratios in zip(
            feature_sizes(cfg), cfg.backbone.pred_scales, cfg.backbone.pred_aspect_ratios):
        height, width = level_hw
        sizes = [_prior_size(scale, ar, level_hw, cfg)
                 for ars in aspect_ratios for scale in scales for ar in ars]
        size = torch.tensor(sizes, dtype=torch.float64)  # [A, 2]
        # Division is exactly rounded, so (i + 0.5) / width in float64 equals the original's Python float.
        cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing='ij')  # [H, W]
        centres = torch.stack((grid_x, grid_y), dim=-1)[:, :, None, :].expand(height, width, len(sizes), 2)
        wh = size[None, None].expand(height, width, len(sizes), 2)
        levels.append(torch.cat((centres, wh), dim=-1).reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)
