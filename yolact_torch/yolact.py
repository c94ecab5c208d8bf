"""YOLACT: backbone -> FPN -> (ProtoNet on P3, one prediction head shared by all levels).

The module tree reproduces the official checkpoints' state-dict keys (backbone.*, fpn.*,
proto_net.*, prediction_layers.0.*, semantic_seg_conv.*, and for YOLACT++ maskiou_net.* and the
backbone's DCN conv2.conv_offset_mask.*), so they load with load_state_dict.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from yolact_torch.backbones import build_backbone
from yolact_torch.config import YolactConfig
from yolact_torch.fpn import FPN
from yolact_torch.head import PredictionHead
from yolact_torch.maskiou import MaskIoUNet
from yolact_torch.priors import make_priors, priors_per_location
from yolact_torch.protonet import make_protonet


class YolactOutput(NamedTuple):
    """Raw network outputs for a batch of B images; P priors, M = cfg.mask_dim.

    loc: float32 [B, P, 4] box regression (decode with yolact_torch.box_coding.decode and the priors).
    conf: float32 [B, P, num_classes] class LOGITS, background first (softmax is post-processing's).
    coef: float32 [B, P, M] mask coefficients, tanh applied.
    proto: float32 [B, Hp, Wp, M] prototypes, channels last, ReLU applied (Hp = 2 * P3 height).
    segm: float32 [B, num_classes - 1, H3, W3] semantic segmentation logits on P3, training only
        (None in eval mode).
    """

    loc: Tensor
    conf: Tensor
    coef: Tensor
    proto: Tensor
    segm: Tensor | None


class Yolact(nn.Module):
    """forward(x float32 [B, 3, cfg.max_size, cfg.max_size], normalised RGB as yolact_torch.preprocess.Normalize
    gives it) -> YolactOutput.

    `priors`: float32 [P, 4] (cx, cy, w, h) relative, a non-persistent buffer from make_priors(cfg).
    `maskiou_net`: YOLACT++'s MaskIoUNet (configs with cfg.maskiou_net), else None; post-processing
    uses it (yolact_torch.postprocess.detect), forward does not.
    """

    def __init__(self, cfg: YolactConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        selected = cfg.backbone.selected_layers
        if max(selected) >= len(self.backbone.channels):
            raise ValueError(f'config {cfg.name}: selected_layers {selected} but the backbone has '
                             f'{len(self.backbone.channels)} stages')
        self.fpn = FPN([self.backbone.channels[i] for i in selected], cfg)
        self.proto_net = make_protonet(cfg.fpn_features, cfg)
        # One head for all levels; a ModuleList so its keys are prediction_layers.0.*, as the original.
        self.prediction_layers = nn.ModuleList([PredictionHead(cfg.fpn_features, cfg, priors_per_location(cfg))])
        self.semantic_seg_conv = nn.Conv2d(cfg.fpn_features, cfg.num_classes - 1, kernel_size=1)
        self.maskiou_net = MaskIoUNet(cfg) if cfg.maskiou_net else None
        self.register_buffer('priors', make_priors(cfg), persistent=False)
        self._bn_frozen = False

    def forward(self, x: Tensor) -> YolactOutput:
        stages = self.backbone(x)
        levels = self.fpn([stages[i] for i in self.cfg.backbone.selected_layers])
        proto = self.proto_net(levels[0]).permute(0, 2, 3, 1).contiguous()
        head = self.prediction_layers[0]
        loc, conf, coef = zip(*(head(level) for level in levels))
        segm = self.semantic_seg_conv(levels[0]) if self.training else None
        return YolactOutput(torch.cat(loc, 1), torch.cat(conf, 1), torch.cat(coef, 1), proto, segm)

    def init_weights(self) -> None:
        """The original's initialisation of everything but the backbone: xavier-uniform conv
        weights, zero biases. (The backbone keeps its own init or pretrained weights.)"""
        backbone_convs = {id(m) for m in self.backbone.modules()}
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and id(module) not in backbone_convs:
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def freeze_bn(self, enable: bool = True) -> None:
        """enable=True: batch norms stay in eval mode (running statistics fixed) with their affine
        parameters not trained, also across later .train() calls; the original trains so when
        its batches are small. enable=False: batch norms train normally again."""
        self._bn_frozen = enable
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train(self.training and not enable)
                module.weight.requires_grad_(not enable)
                module.bias.requires_grad_(not enable)

    def train(self, mode: bool = True) -> 'Yolact':
        super().train(mode)
        if self._bn_frozen:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self
