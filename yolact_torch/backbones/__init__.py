"""Backbones: `build_backbone(cfg.backbone)` gives an nn.Module whose forward returns every
stage's output (a list of float32 [B, C_i, H_i, W_i]) and whose `channels` lists C_i."""

from __future__ import annotations

from torch import nn

from yolact_torch.config import BackboneConfig


def _backbone_class(kind: str):
    # Imported here so that building one kind does not need the other's module.
    if kind == 'resnet':
        from yolact_torch.backbones.resnet import ResNetBackbone
        return ResNetBackbone
    if kind == 'darknet':
        from yolact_torch.backbones.darknet import DarkNetBackbone
        return DarkNetBackbone
    raise ValueError(f'unknown backbone kind {kind!r}: use "resnet" or "darknet"')


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone `cfg` describes, with freshly initialised weights."""
    if cfg.kind == 'resnet':
        return _backbone_class(cfg.kind)(cfg.layers, width=cfg.width, dcn_layers=cfg.dcn_layers,
                                          dcn_interval=cfg.dcn_interval)
    return _backbone_class(cfg.kind)(cfg.layers)


def stage_sizes(cfg: BackboneConfig, size: int) -> list[int]:
    """Spatial size of every stage's output for a `size` x `size` input (conv arithmetic, no run)."""
    return _backbone_class(cfg.kind).stage_sizes(size, len(cfg.layers))
