import pytest
import torch
from torch import nn

from yolact_torch.backbones import build_backbone, stage_sizes
from yolact_torch.config import yolact_base, yolact_darknet53, yolact_resnet50, yolact_tiny


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_resnet101_keys_and_channels():
    backbone = build_backbone(yolact_base.backbone)
    keys = shapes(backbone)
    # torchvision / official ResNet-101 layout, written out from the architecture.
    assert keys['conv1.weight'] == [64, 3, 7, 7]
    assert keys['bn1.running_var'] == [64]
    assert keys['layers.0.0.conv1.weight'] == [64, 64, 1, 1]
    assert keys['layers.0.0.downsample.0.weight'] == [256, 64, 1, 1]
    assert keys['layers.0.0.downsample.1.weight'] == [256]
    assert keys['layers.1.0.conv2.weight'] == [128, 128, 3, 3]
    assert keys['layers.2.22.conv3.weight'] == [1024, 256, 1, 1]
    assert 'layers.2.23.conv1.weight' not in keys  # 23 blocks in stage 2
    assert keys['layers.3.2.bn3.bias'] == [2048]
    projections = {k.split('.downsample')[0] for k in keys if '.downsample.' in k}
    assert projections == {f'layers.{i}.0' for i in range(4)}  # only each stage's first block projects
    assert backbone.channels == [256, 512, 1024, 2048]
    # the stride sits on the 3x3 conv, not the first 1x1
    block = backbone.layers[1][0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)
    assert backbone.layers[0][0].conv2.stride == (1, 1)
    # 101 = 3 * (3 + 4 + 23 + 3) bottleneck convs + stem conv + fc (dropped here)
    convs = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d) and 'downsample' not in n]
    assert len(convs) == 3 * 33 + 1


def test_resnet50_depth():
    backbone = build_backbone(yolact_resnet50.backbone)
    assert [len(stage) for stage in backbone.layers] == [3, 4, 6, 3]


def test_tiny_width():
    backbone = build_backbone(yolact_tiny.backbone)
    width = yolact_tiny.backbone.width
    assert backbone.conv1.weight.shape == (width, 3, 7, 7)
    assert backbone.channels == [width * 4, width * 8, width * 16, width * 32]
    assert [len(stage) for stage in backbone.layers] == list(yolact_tiny.backbone.layers)


def test_darknet53_keys_and_channels():
    backbone = build_backbone(yolact_darknet53.backbone)
    keys = shapes(backbone)
    assert keys['_preconv.0.weight'] == [32, 3, 3, 3]
    assert keys['_preconv.1.running_mean'] == [32]
    assert keys['layers.0.0.0.weight'] == [64, 32, 3, 3]  # stride-2 conv opening stage 0
    assert keys['layers.0.1.conv1.0.weight'] == [32, 64, 1, 1]
    assert keys['layers.0.1.conv2.0.weight'] == [64, 32, 3, 3]
    assert keys['layers.0.1.conv2.1.weight'] == [64]
    assert keys['layers.4.4.conv2.0.weight'] == [1024, 512, 3, 3]
    assert 'layers.4.5.conv1.0.weight' not in keys
    assert backbone.channels == [64, 128, 256, 512, 1024]
    assert [len(stage) - 1 for stage in backbone.layers] == [1, 2, 8, 8, 4]
    assert all(stage[0][0].stride == (2, 2) for stage in backbone.layers)
    leaky = [m for m in backbone.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.1 for m in leaky)
    # 52 convs (+ YOLOv3's classifier = 53)
    assert sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) == 52


@pytest.mark.parametrize('cfg', [yolact_tiny, yolact_darknet53], ids=lambda c: c.name)
def test_stage_outputs_match_stage_sizes(cfg):
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone).eval()
    size = 67  # odd on purpose: exercises the floor arithmetic
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, size, size))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (c, s, s) for c, s in zip(backbone.channels, stage_sizes(cfg.backbone, size))]


def test_darknet_block_is_residual():
    from yolact_torch.backbones.darknet import DarkNetBlock
    block = DarkNetBlock(4).eval()
    nn.init.zeros_(block.conv2[1].weight)  # zero the last batch norm's scale: the branch gives 0
    nn.init.zeros_(block.conv2[1].bias)
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_unknown_kind():
    import dataclasses
    with pytest.raises(ValueError, match='unknown backbone kind'):
        build_backbone(dataclasses.replace(yolact_base.backbone, kind='vgg'))
