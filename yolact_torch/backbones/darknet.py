"""DarkNet-53 backbone (YOLOv3's), as the original's backbone.DarkNetBackbone.

Module names reproduce the official yolact_darknet53 checkpoint's keys: `_preconv.0` (conv) /
`_preconv.1` (batch norm); stage i is `layers.{i}`: `.0` the stride-2 3x3 conv layer, `.{j}`
(j >= 1) residual blocks with `conv1.0/conv1.1` and `conv2.0/conv2.1`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from yolact_torch.backbones.resnet import conv_output_size

EXPANSION = 2  # a residual block's output has EXPANSION x its 1x1 conv's channels
STEM_CHANNELS = 32
STAGE_CHANNELS = (32, 64, 128, 256, 512)  # 1x1 conv channels of each stage's blocks
STAGE_STRIDE = 2
LEAKY_SLOPE = 0.1  # darknet's leaky ReLU


def conv_bn_leaky(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding), batch norm, leaky ReLU: the original's darknetconvlayer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True))


class DarkNetBlock(nn.Module):
    """x + (3x3 conv of (1x1 conv of x)); x float32 [B, EXPANSION * channels, H, W], same shape out."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_leaky(channels * EXPANSION, channels, kernel_size=1)
        self.conv2 = conv_bn_leaky(channels, channels * EXPANSION, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + x


class DarkNetBackbone(nn.Module):
    """layers: residual blocks per stage ((1, 2, 8, 8, 4) is DarkNet-53).

    forward(x float32 [B, 3, H, W]) -> list of every stage's output; stage i has `channels[i]`
    channels and stride 2 ** (i + 1).
    """

    def __init__(self, layers: Sequence[int]):
        super().__init__()
        if len(layers) > len(STAGE_CHANNELS):
            raise ValueError(f'DarkNet has at most {len(STAGE_CHANNELS)} stages, the config gives {len(layers)}')
        self._preconv = conv_bn_leaky(3, STEM_CHANNELS, kernel_size=3)
        self.layers = nn.ModuleList()
        self.channels: list[int] = []
        in_channels = STEM_CHANNELS
        for channels, num_blocks in zip(STAGE_CHANNELS, layers):
            out_channels = channels * EXPANSION
            self.layers.append(nn.Sequential(
                conv_bn_leaky(in_channels, out_channels, kernel_size=3, stride=STAGE_STRIDE),
                *[DarkNetBlock(channels) for _ in range(num_blocks)]))
            self.channels.append(out_channels)
            in_channels = out_channels

    @staticmethod
    def stage_sizes(size: int, num_stages: int) -> list[int]:
        """Spatial size of each stage's output for a `size` x `size` input."""
        sizes = []
        for _ in range(num_stages):
            size = conv_output_size(size, 3, STAGE_STRIDE, 1)
            sizes.append(size)
        return sizes

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self._preconv(x)
        outs = []
        for stage in self.layers:
            x = stage(x)
            outs.append(x)
        return outs
