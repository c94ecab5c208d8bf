"""Official-layout YOLACT++ checkpoints with random weights, for the tests of every stage."""

import dataclasses

import torch

from yolact_torch.backbones.resnet import Bottleneck
from yolact_torch.config import get_config
from yolact_torch.deform_conv import DCN
from yolact_torch.yolact import Yolact

# The official releases' file names: the config comes from them.
PLUS_FILES = {'yolact_plus_resnet50': 'yolact_plus_resnet50_54_800000.pth',
              'yolact_plus_base': 'yolact_plus_base_54_800000.pth'}
# The smallest input the official maskiou_net takes (its five stride-2 3x3 convs need a prototype
# grid of at least 63 pixels; 256 gives 64), to keep the tests fast.
SMALL_SIZE = 256


def random_plus_state(name: str, seed: int = 0) -> dict:
    """A state dict in the official key layout of config `name`, with weights that exercise every
    YOLACT++ part: offsets of a few pixels (fractional, some samples outside the image), masks
    away from 1, DCN biases, confident class scores (some detections at 80 classes) and positive
    predicted mask IoUs. The residual branches are damped (bn3's scale 0.5) so that the deep
    ResNet-101's activations stay of order 1, as a trained network's do."""
    torch.manual_seed(seed)
    model = Yolact(get_config(name))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DCN):
                module.conv_offset_mask.weight.normal_(0, 0.05)
                module.conv_offset_mask.bias.normal_(0, 1.0)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, Bottleneck):
                module.bn3.weight.fill_(0.5)
        model.prediction_layers[0].conf_layer.weight.mul_(20)
        last = [m for m in model.maskiou_net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.bias.uniform_(0.2, 1.0)
    return model.state_dict()


def small(cfg):
    """cfg at SMALL_SIZE (the priors' pixel scales stay those of the config)."""
    return dataclasses.replace(cfg, max_size=SMALL_SIZE)
