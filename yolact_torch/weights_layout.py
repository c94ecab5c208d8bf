"""What a state dict in the official key layout says about the network that wrote it.

A dbolya/yolact checkpoint is a bare state dict: its name gives the config it was trained with
(`yolact_resnet50_pascal_12_3000.pth` was trained with a config copied from `yolact_resnet50`),
its shapes give the rest. `read_layout` works out the backbone and its depth, the class count,
the mask dimension, the priors per location and the FPN levels from the keys and shapes;
`layout_of_config` says what a config implies, so a checkpoint is checked against its base
config by comparing the two, field by field, and one that fits no known config is refused with
what was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from torch import Tensor

from yolact_torch.config import CONFIGS, YolactConfig
from yolact_torch.priors import priors_per_location

HEAD = 'prediction_layers.0.'
_STAGE_BLOCK = re.compile(r'backbone\.layers\.(\d+)\.(\d+)\.')
_DCN_BLOCK = re.compile(r'backbone\.layers\.(\d+)\.(\d+)\.conv2\.conv_offset_mask\.weight')


class LayoutError(ValueError):
    """A state dict that lacks the keys every YOLACT has; checkpoint.py turns it into a CheckpointError."""


@dataclass(frozen=True)
class WeightsLayout:
    """The architecture a YOLACT state dict describes.

    backbone: 'resnet' or 'darknet'. layers: blocks per backbone stage ((3, 4, 23, 3) is ResNet-101,
    (1, 2, 8, 8, 4) DarkNet-53). width: ResNet stem channels (64 for the official ones; DarkNet's
    are fixed, 32). num_classes: scores per prior, background included. mask_dim: prototypes.
    priors_per_location: priors per feature-map cell. fpn_levels: FPN outputs (selected backbone
    stages plus the downsampled extra levels). fpn_features: FPN channels.
    deformable: (stage, block) of the backbone blocks whose 3x3 conv is a DCN (YOLACT++).
    maskiou: whether it has YOLACT++'s maskiou_net.
    """

    backbone: str
    layers: tuple[int, ...]
    width: int
    num_classes: int
    mask_dim: int
    priors_per_location: int
    fpn_levels: int
    fpn_features: int
    deformable: tuple[tuple[int, int], ...] = ()
    maskiou: bool = False

    def describe(self) -> str:
        """One phrase, e.g. 'resnet backbone with blocks (3, 4, 6, 3), 3 classes, ...'."""
        plus = (f', deformable convs in blocks {list(self.deformable)}' if self.deformable else '') + \
            (', a maskiou_net' if self.maskiou else '')
        return (f'{self.backbone} backbone with blocks {self.layers} (width {self.width}), '
                f'{self.num_classes - 1} classes, mask_dim {self.mask_dim}, {self.priors_per_location} priors '
                f'per location, {self.fpn_levels} FPN levels of {self.fpn_features} channels{plus}')


def _shape(state: dict[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise LayoutError(f'it has no {key}, which every YOLACT has')
    return tuple(state[key].shape)


def _blocks_per_stage(state: dict[str, Tensor], first_block: int) -> tuple[int, ...]:
    """Blocks of each backbone stage, from the highest block index of backbone.layers.{stage}.{block}.
    first_block: index of a stage's first residual block (DarkNet's stage starts with its
    downsampling conv at index 0)."""
    highest: dict[int, int] = {}
    for key in state:
        match = _STAGE_BLOCK.match(key)
        if match:
            stage, block = int(match[1]), int(match[2])
            highest[stage] = max(highest.get(stage, -1), block)
    if sorted(highest) != list(range(len(highest))) or not highest:
        raise LayoutError(f'its backbone stages are {sorted(highest)}, not 0, 1, 2, ...')
    return tuple(highest[s] + 1 - first_block for s in range(len(highest)))


def read_layout(state: dict[str, Tensor]) -> WeightsLayout:
    """The architecture of a state dict in the official key layout ('module.' prefixes and legacy
    keys already removed); LayoutError when a key every YOLACT has is missing."""
    if 'backbone._preconv.0.weight' in state:
        backbone, width, layers = 'darknet', _shape(state, 'backbone._preconv.0.weight')[0], _blocks_per_stage(state, 1)
    else:
        backbone, width, layers = 'resnet', _shape(state, 'backbone.conv1.weight')[0], _blocks_per_stage(state, 0)
    per_location = _shape(state, HEAD + 'bbox_layer.weight')[0] // 4
    conf = _shape(state, HEAD + 'conf_layer.weight')[0]
    mask = _shape(state, HEAD + 'mask_layer.weight')[0]
    segm = _shape(state, 'semantic_seg_conv.weight')[0]
    if per_location == 0 or conf % per_location or mask % per_location or conf // per_location != segm + 1:
        raise LayoutError(f'its head does not add up: {per_location} priors per location, conf_layer {conf} '
                          f'channels, mask_layer {mask}, semantic_seg_conv {segm} classes')
    lateral = sum(1 for k in state if re.fullmatch(r'fpn\.lat_layers\.\d+\.weight', k))
    downsample = sum(1 for k in state if re.fullmatch(r'fpn\.downsample_layers\.\d+\.weight', k))
    return WeightsLayout(
        backbone=backbone, layers=layers, width=width, num_classes=conf // per_location,
        mask_dim=mask // per_location, priors_per_location=per_location, fpn_levels=lateral + downsample,
        fpn_features=_shape(state, 'fpn.lat_layers.0.weight')[0],
        deformable=tuple(sorted((int(m[1]), int(m[2])) for m in map(_DCN_BLOCK.fullmatch, state) if m)),
        maskiou=any(k.startswith('maskiou_net.') for k in state))


def layout_of_config(cfg: YolactConfig) -> WeightsLayout:
    """The layout a model built from `cfg` has (no model is built)."""
    from yolact_torch.backbones.darknet import STEM_CHANNELS
    from yolact_torch.backbones.resnet import deformable_blocks

    bcfg = cfg.backbone
    return WeightsLayout(
        backbone=bcfg.kind, layers=tuple(bcfg.layers),
        width=bcfg.width if bcfg.kind == 'resnet' else STEM_CHANNELS, num_classes=cfg.num_classes,
        mask_dim=cfg.mask_dim, priors_per_location=priors_per_location(cfg),
        fpn_levels=len(bcfg.selected_layers) + cfg.fpn_num_downsample, fpn_features=cfg.fpn_features,
        deformable=deformable_blocks(bcfg.layers, bcfg.dcn_layers, bcfg.dcn_interval) if bcfg.kind == 'resnet' else (),
        maskiou=bool(cfg.maskiou_net))


# What the class set does not decide: a checkpoint fits a config when these agree.
ARCHITECTURE_FIELDS = tuple(f.name for f in fields(WeightsLayout) if f.name != 'num_classes')


def differences(found: WeightsLayout, expected: WeightsLayout) -> list[str]:
    """'field found X, config Y' for every architecture field that differs (the class count aside)."""
    return [f'{name} {getattr(found, name)} (config {getattr(expected, name)})'
            for name in ARCHITECTURE_FIELDS if getattr(found, name) != getattr(expected, name)]


def known_layouts() -> dict[str, WeightsLayout]:
    """What each named config implies, in yolact_torch.config.CONFIGS order (a config added there is known here)."""
    return {name: layout_of_config(cfg) for name, cfg in CONFIGS.items()}


def configs_fitting(found: WeightsLayout) -> list[str]:
    """Names of the known configs whose architecture the weights have (any class count)."""
    return [name for name, layout in known_layouts().items() if not differences(found, layout)]
