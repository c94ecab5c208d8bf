"""Named YOLACT configurations, equal to the original repository's (dbolya/yolact, data/config.py).

A config is an immutable dataclass; variants are made with `dataclasses.replace` (or
`YolactConfig.with_classes` for another class set). Every number the model, the losses, the
post-processing and the export use comes from here, never from literals in the code.

Class indices: the network predicts `num_classes = len(class_names) + 1` scores per prior, index 0
being background. Everything after Fast NMS uses 0-based class indices with the background
excluded (`class_names[i]`); `category_ids[i]` is the dataset's category id for class i (COCO's
ids are not contiguous).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.errors import ToolkitError
from runtime.metadata import ModelMetadata



class ConfigError(ToolkitError, ValueError):
    """An unknown config name, or config fields that do not fit together."""


# BGR order, ImageNet statistics in 0..255 pixel units (the original's MEANS / STD).
IMAGENET_MEAN_BGR = (103.94, 116.78, 123.68)
IMAGENET_STD_BGR = (57.38, 57.12, 58.40)

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book',
    'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
)

# COCO category id of each class in COCO_CLASSES order (the inverse of the original's
# COCO_LABEL_MAP, which maps category id -> 1-based class index).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)

# The synthetic shapes set (yolact_torch/data/shapes.py) and the demo model trained on it.
SHAPES_CLASSES = ('circle', 'triangle', 'rectangle', 'star', 'ring')


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone and prior layout.

    kind: 'resnet' (bottleneck blocks, stride on the 3x3 conv) or 'darknet'.
    layers: blocks per stage ([3, 4, 23, 3] is ResNet-101).
    width: channels of the first stage's bottleneck (64 for the official ResNets); the
        tiny config uses fewer.
    selected_layers: stages whose outputs feed the FPN (C3, C4, C5 for ResNet: 1, 2, 3).
    pred_scales / pred_aspect_ratios: per FPN level (P3..P7), as the original.
    dcn_layers / dcn_interval (ResNet, YOLACT++): per stage, how many of its last blocks have a
        deformable 3x3 conv (yolact_torch.deform_conv.DCN) instead of a plain one; among those, block i
        of the stage is deformable only if i % dcn_interval == 0 (block 0 whenever all are). The
        original's ResNetBackbone._make_layer rule.
    """

    name: str
    kind: str
    layers: tuple[int, ...]
    selected_layers: tuple[int, ...]
    pred_scales: tuple[tuple[float, ...], ...]
    pred_aspect_ratios: tuple[tuple[tuple[float, ...], ...], ...]
    width: int = 64
    use_pixel_scales: bool = True
    preapply_sqrt: bool = False
    # The original keeps square anchors "for backward compatibility with a bug": w = h.
    use_square_anchors: bool = True
    dcn_layers: tuple[int, ...] = (0, 0, 0, 0)
    dcn_interval: int = 1


@dataclass(frozen=True)
class YolactConfig:
    name: str
    backbone: BackboneConfig
    class_names: tuple[str, ...] = COCO_CLASSES
    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS

    # Input: images are resized to max_size x max_size (aspect ratio not kept), then
    # normalised per BGR channel with mean/std (0..255 units), then put in RGB order.
    max_size: int = 550
    mean_bgr: tuple[float, float, float] = IMAGENET_MEAN_BGR
    std_bgr: tuple[float, float, float] = IMAGENET_STD_BGR

    # FPN: 256 features, bilinear top-down, P6/P7 by stride-2 3x3 convs on P5 (no ReLU).
    fpn_features: int = 256
    fpn_num_downsample: int = 2
    # ProtoNet on P3: 3x conv3x3+ReLU, bilinear x2 + ReLU, conv3x3+ReLU, conv1x1 to mask_dim, ReLU.
    proto_channels: int = 256
    mask_dim: int = 32
    # Prediction head (shared by all levels): upfeature conv3x3+ReLU with this many channels.
    head_channels: int = 256
    # YOLACT++ mask re-scoring: (out_channels, kernel, stride) of the maskiou_net convs (no
    # padding, ReLU after each; a 1x1 conv to num_classes - 1 and a global max follow). Empty:
    # no maskiou_net (YOLACT). When present, post-processing multiplies each detection's score
    # by the IoU the net predicts for its class from its cropped mask (the original's rescore_mask).
    maskiou_net: tuple[tuple[int, int, int], ...] = ()

    # Box coding (SSD) variances.
    variances: tuple[float, float] = (0.1, 0.2)

    # Inference post-processing (Detect + Fast NMS + mask assembly).
    conf_thresh: float = 0.05
    nms_thresh: float = 0.5
    nms_top_k: int = 200
    max_num_detections: int = 100
    crop_padding: int = 1  # proto pixels added around the box when cropping masks
    mask_threshold: float = 0.5  # pasted mask is (value > mask_threshold)

    # Training (the original's yolact_base values).
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.1
    lr_steps: tuple[int, ...] = (280000, 600000, 700000, 750000)
    max_iter: int = 800000
    lr_warmup_init: float = 1e-4
    lr_warmup_until: int = 500
    positive_iou_threshold: float = 0.5
    negative_iou_threshold: float = 0.4
    ohem_negpos_ratio: int = 3
    conf_alpha: float = 1.0
    bbox_alpha: float = 1.5
    mask_alpha: float = 6.125
    semantic_segmentation_alpha: float = 1.0
    masks_to_train: int = 100
    # YOLACT++'s maskiou_net loss (configs with maskiou_net): smooth L1 between its predicted IoU
    # and the IoU of the binarised predicted mask with its ground truth, times maskiou_alpha; masks
    # whose ground truth covers no more than discard_mask_area prototype pixels do not train it
    # (-1: all train). The original's defaults; its YOLACT++ configs set 25 and 5 * 5.
    maskiou_alpha: float = 1.0
    discard_mask_area: float = -1
    # Ground-truth boxes narrower or shorter than this (relative) are discarded in training.
    discard_box_width: float = 4 / 550
    discard_box_height: float = 4 / 550

    @property
    def num_classes(self) -> int:
        """Scores per prior, background included (81 for COCO)."""
        return len(self.class_names) + 1

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return (self.max_size, self.max_size)

    def with_classes(self, class_names, category_ids=None) -> 'YolactConfig':
        """This config for another class set (category ids default to 1..K)."""
        class_names = tuple(class_names)
        if category_ids is None:
            category_ids = tuple(range(1, len(class_names) + 1))
        category_ids = tuple(int(c) for c in category_ids)
        if len(category_ids) != len(class_names):
            raise ConfigError(
                f'{len(class_names)} class names but {len(category_ids)} category ids: give one id per class')
        return dataclasses.replace(self, class_names=class_names, category_ids=category_ids)


_BASE_SCALES = ((24,), (48,), (96,), (192,), (384,))
_BASE_ASPECTS = (((1, 1 / 2, 2),),) * 5


def _scaled(scales, size):
    # The original: int(x[0] / yolact_base_config.max_size * size)
    return tuple((int(s[0] / 550 * size),) for s in scales)


_RESNET101 = BackboneConfig(
    name='ResNet101', kind='resnet', layers=(3, 4, 23, 3), selected_layers=(1, 2, 3),
    pred_scales=_BASE_SCALES, pred_aspect_ratios=_BASE_ASPECTS)

yolact_base = YolactConfig(name='yolact_base', backbone=_RESNET101)

yolact_im400 = dataclasses.replace(
    yolact_base, name='yolact_im400', max_size=400,
    backbone=dataclasses.replace(_RESNET101, pred_scales=_scaled(_BASE_SCALES, 400)))

yolact_im700 = dataclasses.replace(
    yolact_base, name='yolact_im700', max_size=700, masks_to_train=300,
    backbone=dataclasses.replace(_RESNET101, pred_scales=_scaled(_BASE_SCALES, 700)))

yolact_resnet50 = dataclasses.replace(
    yolact_base, name='yolact_resnet50',
    backbone=dataclasses.replace(_RESNET101, name='ResNet50', layers=(3, 4, 6, 3)))

# DarkNet's transform in the original: RGB, x / 255, no mean subtraction.
yolact_darknet53 = dataclasses.replace(
    yolact_base, name='yolact_darknet53', mean_bgr=(0.0, 0.0, 0.0), std_bgr=(255.0, 255.0, 255.0),
    backbone=BackboneConfig(
        name='DarkNet53', kind='darknet', layers=(1, 2, 8, 8, 4), selected_layers=(2, 3, 4),
        pred_scales=_BASE_SCALES, pred_aspect_ratios=_BASE_ASPECTS))

# Small enough to train on 2 CPU cores: a narrow, shallow ResNet at 320 px with 64-channel
# FPN, ProtoNet and head. Same architecture otherwise; trained on the synthetic shapes set.
yolact_tiny = dataclasses.replace(
    yolact_base, name='yolact_tiny', max_size=320,
    class_names=SHAPES_CLASSES, category_ids=tuple(range(1, len(SHAPES_CLASSES) + 1)),
    backbone=BackboneConfig(
        name='ResNetTiny', kind='resnet', layers=(1, 1, 2, 1), width=16, selected_layers=(1, 2, 3),
        pred_scales=_scaled(_BASE_SCALES, 320), pred_aspect_ratios=_BASE_ASPECTS),
    fpn_features=64, proto_channels=64, head_channels=64,
    lr_steps=(), max_iter=0, lr_warmup_until=100, masks_to_train=100,
    discard_box_width=4 / 320, discard_box_height=4 / 320)

# YOLACT++ (data/config.py yolact_plus_base_config, yolact_plus_resnet50_config): deformable
# convs in the backbone, three scales per level with non-square anchors, and mask re-scoring.
_PLUS_SCALES = tuple(tuple(i * 2 ** (j / 3.0) for j in range(3)) for i in (24, 48, 96, 192, 384))
_MASKIOU_NET = ((8, 3, 2), (16, 3, 2), (32, 3, 2), (64, 3, 2), (128, 3, 2))

yolact_plus_base = dataclasses.replace(
    yolact_base, name='yolact_plus_base', maskiou_net=_MASKIOU_NET, maskiou_alpha=25.0, discard_mask_area=5 * 5,
    backbone=dataclasses.replace(
        _RESNET101, name='ResNet101_DCN_Interval3', pred_scales=_PLUS_SCALES, use_square_anchors=False,
        dcn_layers=(0, 4, 23, 3), dcn_interval=3))

yolact_plus_resnet50 = dataclasses.replace(
    yolact_plus_base, name='yolact_plus_resnet50',
    backbone=dataclasses.replace(
        yolact_plus_base.backbone, name='ResNet50_DCNv2', layers=(3, 4, 6, 3), dcn_layers=(0, 4, 6, 3),
        dcn_interval=1))

# yolact_tiny with YOLACT++'s two network changes (a deformable 3x3 conv in every block of stages
# 2-4, and maskiou_net with re-scoring); tiny's priors, so that it starts from the demo's trained
# weights (make train-demo-plus). Small enough for the tests and for CPU calibration.
yolact_plus_tiny = dataclasses.replace(
    yolact_tiny, name='yolact_plus_tiny', maskiou_net=_MASKIOU_NET, maskiou_alpha=25.0, discard_mask_area=5 * 5,
    backbone=dataclasses.replace(yolact_tiny.backbone, name='ResNetTiny_DCN', dcn_layers=(0, 1, 2, 1)))

CONFIGS: dict[str, YolactConfig] = {
    c.name: c for c in (yolact_base, yolact_im400, yolact_im700, yolact_resnet50,
                        yolact_darknet53, yolact_tiny, yolact_plus_base, yolact_plus_resnet50,
                        yolact_plus_tiny)
}


def get_config(name: str) -> YolactConfig:
    """The named config; an unknown name raises ConfigError listing the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError(f'unknown config {name!r}: choose one of {", ".join(CONFIGS)}') from None


def trained_config_name(path) -> str | None:
    """The name of the config a checkpoint was trained with, by the original's naming rule
    `{config name}_{epoch}_{iteration}.pth` ('yolact_resnet50_pascal_12_3000.pth' ->
    'yolact_resnet50_pascal'); None for a file not named that way."""
    from pathlib import Path

    parts = Path(path).name.split('.')[0].split('_')
    if len(parts) > 2 and parts[-1].isdigit() and parts[-2].isdigit():
        return '_'.join(parts[:-2])
    return None


def config_from_filename(path) -> YolactConfig:
    """Infer the config from a checkpoint's file name, as the original does.

    The original takes the file name's stem up to the second-to-last underscore
    ('yolact_base_54_800000.pth' -> 'yolact_base') and appends '_config'. Names that do not follow
    that pattern are matched by the longest config name they start with.
    """
    from pathlib import Path

    stem = Path(path).name.split('.')[0]
    candidate = trained_config_name(path)
    if candidate in CONFIGS:
        return CONFIGS[candidate]
    for name in sorted(CONFIGS, key=len, reverse=True):
        if stem.startswith(name):
            return CONFIGS[name]
    raise ConfigError(
        f'cannot infer the config from the file name {Path(path).name!r}: pass --config with one of '
        f'{", ".join(CONFIGS)}')


def metadata_from_config(cfg: YolactConfig, *, cross_class: bool = False, max_dets: int | None = None,
                         precision: str = 'fp32') -> ModelMetadata:
    """The runtime's description (runtime.metadata.ModelMetadata) of a model built from `cfg`;
    max_dets None takes the config's max_num_detections."""
    return ModelMetadata(
        config=cfg.name, class_names=tuple(cfg.class_names), category_ids=tuple(cfg.category_ids),
        input_size=cfg.input_size, mean_bgr=tuple(cfg.mean_bgr), std_bgr=tuple(cfg.std_bgr),
        conf_thresh=cfg.conf_thresh, nms_thresh=cfg.nms_thresh, top_k=cfg.nms_top_k,
        max_dets=cfg.max_num_detections if max_dets is None else int(max_dets),
        cross_class=bool(cross_class), mask_threshold=cfg.mask_threshold, precision=precision)
