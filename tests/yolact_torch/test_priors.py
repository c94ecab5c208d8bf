"""Priors against values computed here from the original's make_priors formula:
x = (i + 0.5) / conv_w, y = (j + 0.5) / conv_h, w = scale * sqrt(ar) / max_size, h = w (square)."""

import dataclasses
import math

import pytest
import torch

from yolact_torch.config import CONFIGS, yolact_base, yolact_im400, yolact_tiny
from yolact_torch.priors import feature_sizes, make_priors

ASPECT_RATIOS = (1, 1 / 2, 2)  # the official configs' per-level list


def conv(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def expected_level_sizes(cfg):
    """P3..P7 side lengths: ResNet = 7x7/2 stem, 3x3/2 max pool, stages at stride 1, 2, 2, 2;
    DarkNet = five stride-2 3x3 stages; then two stride-2 3x3 FPN convs."""
    size = cfg.max_size
    if cfg.backbone.kind == 'resnet':
        size = conv(conv(size, 7, 2, 3), 3, 2, 1)
        stages = []
        for stride in (1, 2, 2, 2):
            size = conv(size, 3, stride, 1)
            stages.append(size)
    else:
        stages = []
        for _ in range(5):
            size = conv(size, 3, 2, 1)
            stages.append(size)
    levels = [stages[i] for i in cfg.backbone.selected_layers]
    levels += [conv(levels[-1], 3, 2, 1)]
    levels += [conv(levels[-1], 3, 2, 1)]
    return levels


@pytest.mark.parametrize('name', list(CONFIGS))
def test_feature_sizes_and_prior_count(name):
    cfg = CONFIGS[name]
    sides = expected_level_sizes(cfg)
    assert feature_sizes(cfg) == [(s, s) for s in sides]
    scales_per_level = len(cfg.backbone.pred_scales[0])  # YOLACT++: three
    assert make_priors(cfg).shape == (sum(s * s for s in sides) * len(ASPECT_RATIOS) * scales_per_level, 4)


def test_yolact_base_level_sizes_and_count():
    # The numbers the YOLACT paper and repository give for 550 px.
    assert feature_sizes(yolact_base) == [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    assert make_priors(yolact_base).shape == (19248, 4)


def prior_index(level_sides, level, row, col, k, per_location=3):
    offset = sum(s * s for s in level_sides[:level]) * per_location
    return offset + (row * level_sides[level] + col) * per_location + k


@pytest.mark.parametrize('cfg', [yolact_base, yolact_im400, yolact_tiny], ids=lambda c: c.name)
def test_priors_against_hand_table(cfg):
    priors = make_priors(cfg)
    assert priors.dtype == torch.float32
    sides = expected_level_sizes(cfg)
    for level, side in enumerate(sides):
        scale = cfg.backbone.pred_scales[level][0]
        for row, col in [(0, 0), (0, 1), (1, 0), (side // 2, side - 1), (side - 1, side - 1)]:
            for k, ar in enumerate(ASPECT_RATIOS):
                w = scale * math.sqrt(ar) / cfg.max_size
                expected = torch.tensor([(col + 0.5) / side, (row + 0.5) / side, w, w], dtype=torch.float32)
                got = priors[prior_index(sides, level, row, col, k)]
                assert torch.equal(got, expected), (cfg.name, level, row, col, k, got, expected)


def test_scales_follow_the_config():
    # im400's scales are the original's int(s / 550 * 400); P3's first prior is 17 px wide.
    assert make_priors(yolact_im400)[0, 2].item() == pytest.approx(17 / 400)
    assert make_priors(yolact_base)[0, 2].item() == pytest.approx(24 / 550)
    assert make_priors(yolact_base)[-1, 2].item() == pytest.approx(384 * math.sqrt(2) / 550)


def test_non_square_and_relative_options():
    base = yolact_tiny.backbone
    rectangular = dataclasses.replace(yolact_tiny, backbone=dataclasses.replace(base, use_square_anchors=False))
    priors = make_priors(rectangular)
    scale = base.pred_scales[0][0]
    # k = 1 is aspect ratio 1/2: narrower than tall
    assert priors[1, 2].item() == pytest.approx(scale * math.sqrt(0.5) / yolact_tiny.max_size)
    assert priors[1, 3].item() == pytest.approx(scale / math.sqrt(0.5) / yolact_tiny.max_size)

    relative = dataclasses.replace(yolact_tiny, backbone=dataclasses.replace(
        base, use_pixel_scales=False, preapply_sqrt=True, use_square_anchors=False,
        pred_scales=((2.0,),) * 5))
    side = expected_level_sizes(yolact_tiny)[0]
    priors = make_priors(relative)
    # preapply_sqrt: the aspect ratio is used as given; scales count in cells of the level
    assert priors[2, 2].item() == pytest.approx(2.0 * 2 / side)
    assert priors[2, 3].item() == pytest.approx(2.0 / 2 / side)
