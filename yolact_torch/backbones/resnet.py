"""ResNet backbone with bottleneck blocks, as the original's backbone.ResNetBackbone.

The stride of a downsampling block sits on its 3x3 conv (torchvision's "ResNet v1.5"), and the
module names reproduce the official checkpoints' keys: conv1, bn1, layers.{i}.{j}.conv1/bn1/conv2/
bn2/conv3/bn3 and layers.{i}.0.downsample.0 (1x1 conv) / .1 (batch norm).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from yolact_torch.deform_conv import DCN

EXPANSION = 4  # output channels of a bottleneck block = EXPANSION * its 3x3 conv's channels
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 7, 2, 3
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1
STAGE_STRIDES = (1, 2, 2, 2)  # stage 0 keeps the stem's resolution, the others halve it


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a conv or pooling layer (PyTorch's floor arithmetic)."""
    return (size + 2 * padding - kernel) // stride + 1


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 with batch norms, plus the (projected) input, then ReLU.

    x float32 [B, in_channels, H, W] -> [B, EXPANSION * planes, H / stride, W / stride].
    deformable: the 3x3 conv is YOLACT++'s DCN (with a bias and its conv_offset_mask).
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 deformable: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if deformable:
            self.conv2 = DCN(planes, planes, kernel_size=3, stride=stride, padding=1)
        else:
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        # An empty Sequential (no state-dict keys) when the input already has the output's shape.
        self.downsample = downsample if downsample is not None else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def deformable_blocks(layers: Sequence[int], dcn_layers: Sequence[int], dcn_interval: int) -> tuple[tuple[int, int], ...]:
    """(stage, block) of every block whose 3x3 conv is deformable: of a stage's blocks, the last
    dcn_layers[stage], and among those only block i with i % dcn_interval == 0 (the original's
    ResNetBackbone._make_layer rule)."""
    return tuple((stage, i) for stage, num_blocks in enumerate(layers) for i in range(num_blocks)
                 if i + dcn_layers[stage] >= num_blocks and i % dcn_interval == 0)


class ResNetBackbone(nn.Module):
    """ResNet without its classifier: stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), then stages.

    layers: bottleneck blocks per stage ((3, 4, 23, 3) is ResNet-101). width: channels of the stem
    and of stage 0's 3x3 convs (64 for the official models); stage i uses width * 2**i.
    dcn_layers, dcn_interval: which blocks' 3x3 convs are deformable (BackboneConfig's rule).
    forward(x float32 [B, 3, H, W]) -> list of every stage's output; stage i has `channels[i]`
    channels and stride 4 * 2**i.
    """

    def __init__(self, layers: Sequence[int], width: int = 64, dcn_layers: Sequence[int] = (0, 0, 0, 0),
                 dcn_interval: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING)

        self.layers = nn.ModuleList()
        self.channels: list[int] = []
        in_channels = width
        dcn = deformable_blocks(layers, dcn_layers, dcn_interval)
        for index, num_blocks in enumerate(layers):
            planes = width * 2 ** index
            deformable = [(index, i) in dcn for i in range(num_blocks)]
            stage = self._make_stage(in_channels, planes, STAGE_STRIDES[index], deformable)
            self.layers.append(stage)
            in_channels = planes * EXPANSION
            self.channels.append(in_channels)

        # The official models start from ImageNet weights; a model trained from scratch (the tiny
        # config) needs a scale-aware init, so use torchvision's ResNet one.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The original zeroes a DCN's bias and offsets: it starts as the plain conv it replaces.
        for module in self.modules():
            if isinstance(module, DCN):
                for tensor in (module.bias, module.conv_offset_mask.weight, module.conv_offset_mask.bias):
                    nn.init.zeros_(tensor)

    @staticmethod
    def _make_stage(in_channels: int, planes: int, stride: int, deformable: Sequence[bool]) -> nn.Sequential:
        """One block per entry of `deformable` (whether its 3x3 conv is a DCN)."""
        downsample = None
        if stride != 1 or in_channels != planes * EXPANSION:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, planes * EXPANSION, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION))
        blocks = [Bottleneck(in_channels, planes, stride, downsample, deformable[0])]
        blocks += [Bottleneck(planes * EXPANSION, planes, deformable=d) for d in deformable[1:]]
        return nn.Sequential(*blocks)

    @staticmethod
    def stage_sizes(size: int, num_stages: int) -> list[int]:
        """Spatial size of each stage's output for a `size` x `size` input."""
        size = conv_output_size(size, STEM_KERNEL, STEM_STRIDE, STEM_PADDING)
        size = conv_output_size(size, POOL_KERNEL, POOL_STRIDE, POOL_PADDING)
        sizes = []
        for stride in STAGE_STRIDES[:num_stages]:
            size = conv_output_size(size, 3, stride, 1)
            sizes.append(size)
        return sizes

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in self.layers:
            x = stage(x)
            outs.append(x)
        return outs
