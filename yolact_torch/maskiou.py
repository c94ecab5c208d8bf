"""YOLACT++'s mask re-scoring network (dbolya/yolact yolact.py FastMaskIoUNet, layers/output_utils.py).

Keys maskiou_net.maskiou_net.{0,2,4,...}.weight/bias, as the official YOLACT++ checkpoints (the
original's make_net: a conv then a ReLU per layer, the last ReLU kept).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolact_torch.config import YolactConfig


class MaskIoUNet(nn.Module):
    """forward(masks float32 [N, 1, Hp, Wp], sigmoid and cropped, prototype grid) -> float32
    [N, num_classes - 1]: the predicted IoU of each mask with its object, per foreground class.

    cfg.maskiou_net's convs (no padding, ReLU), a 1x1 conv to num_classes - 1 with a ReLU, then the
    maximum over the remaining grid. Each conv needs at least a kernel's size of input, so the
    prototype grid must stay >= 3 pixels through the stride-2 convs (Hp >= 63 for the official
    five: an input of at least 256 pixels).
    """

    def __init__(self, cfg: YolactConfig):
        super().__init__()
        layers, in_channels = [], 1
        for out_channels, kernel, stride in (*cfg.maskiou_net, (cfg.num_classes - 1, 1, 1)):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride=stride), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.maskiou_net = nn.Sequential(*layers)

    def forward(self, masks: Tensor) -> Tensor:
        return torch.amax(self.maskiou_net(masks), dim=(2, 3))
