"""ProtoNet: the mask prototypes, computed from P3 (the original's mask_proto_net of the yolact
configs)."""

from __future__ import annotations

from torch import nn

from yolact_torch.config import YolactConfig

NUM_CONVS_BEFORE_UPSAMPLE = 3
UPSAMPLE_FACTOR = 2


def make_protonet(in_channels: int, cfg: YolactConfig) -> nn.Sequential:
    """3x (conv3x3 + ReLU), bilinear x2 + ReLU, conv3x3 + ReLU, conv1x1 to cfg.mask_dim, ReLU.

    float32 [B, in_channels, H, W] -> [B, cfg.mask_dim, 2H, 2W], non-negative. The Sequential's
    indices are the original's, so the convs sit at keys 0, 2, 4, 8 and 10. (The ReLU after the
    upsampling changes nothing, the input being non-negative; it keeps those indices.)
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(NUM_CONVS_BEFORE_UPSAMPLE):
        layers += [nn.Conv2d(channels, cfg.proto_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        channels = cfg.proto_channels
    layers += [nn.Upsample(scale_factor=UPSAMPLE_FACTOR, mode='bilinear', align_corners=False), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(channels, cfg.proto_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(cfg.proto_channels, cfg.mask_dim, kernel_size=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)
