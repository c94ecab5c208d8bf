"""Augmentations keep images, masks and boxes in agreement, and are functions of their generator."""

import dataclasses

import numpy as np
import pytest

from yolact_torch.config import get_config
from yolact_torch.data.augment import (Example, TrainAugmentation, eval_transform, expand, mirror, photometric_distort,
                                       random_crop, resize)

CFG = get_config('yolact_tiny')


def _example(seed=0, size=(60, 90)):
    """Two rectangles with tight boxes and a textured image."""
    rng = np.random.default_rng(seed)
    height, width = size
    masks = np.zeros((2, height, width), np.uint8)
    masks[0, 10:30, 5:40] = 1
    masks[1, 25:55, 50:85] = 1
    boxes = np.float32([[5, 10, 40, 30], [50, 25, 85, 55]])
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    return Example(image, masks, boxes, np.int64([1, 3]))


def _tight_boxes(masks):
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.float32(boxes)


@pytest.mark.parametrize('seed', range(6))
def test_expand_moves_masks_and_boxes_together(seed):
    ex = _example()
    out = expand(ex, np.random.default_rng(seed), CFG.mean_bgr)
    np.testing.assert_allclose(_tight_boxes(out.masks), out.boxes)
    assert out.image.shape[:2] == out.masks.shape[1:] and out.image.shape[0] >= ex.image.shape[0]
    if out.image.shape != ex.image.shape:  # the padding is the normalisation mean
        assert (out.image == np.float32(CFG.mean_bgr)).all(-1).any()


@pytest.mark.parametrize('seed', range(6))
def test_mirror_flips_masks_and_boxes_together(seed):
    out = mirror(_example(), np.random.default_rng(seed))
    np.testing.assert_allclose(_tight_boxes(out.masks), out.boxes)


def test_mirror_flips_about_half_of_the_time():
    ex = _example()
    flips = 0
    for seed in range(40):
        out = mirror(ex, np.random.default_rng(seed))
        flipped = not np.array_equal(out.image, ex.image)
        flips += flipped
        if flipped:
            np.testing.assert_array_equal(out.image, ex.image[:, ::-1])
    assert 10 < flips < 30


@pytest.mark.parametrize('seed', range(10))
def test_crop_keeps_instances_whose_centre_is_inside(seed):
    ex = _example()
    out = random_crop(ex, np.random.default_rng(seed))
    assert len(out.labels) >= 1 and out.image.shape[:2] == out.masks.shape[1:]
    height, width = out.image.shape[:2]
    assert (out.boxes >= 0).all() and (out.boxes[:, [0, 2]] <= width).all() and (out.boxes[:, [1, 3]] <= height).all()
    # Boxes are clipped to the crop, so they equal the tight boxes of the cropped rectangles.
    np.testing.assert_allclose(_tight_boxes(out.masks), out.boxes)


def test_photometric_changes_colours_only():
    ex = _example()
    changed = 0
    for seed in range(8):
        out = photometric_distort(ex, np.random.default_rng(seed))
        assert out.image.shape == ex.image.shape and out.image.dtype == np.float32
        assert out.image.min() >= 0 and out.image.max() <= 255
        assert out.masks is ex.masks and out.boxes is ex.boxes
        changed += not np.allclose(out.image, ex.image, atol=1)
    assert changed >= 4


def test_resize_makes_model_size_and_relative_boxes():
    out = eval_transform(_example(), CFG)
    assert out.image.shape == (*CFG.input_size, 3) and out.masks.shape == (2, *CFG.input_size)
    np.testing.assert_allclose(out.boxes, np.float32([[5, 10, 40, 30], [50, 25, 85, 55]]) / [90, 60, 90, 60],
                               atol=1e-6)
    np.testing.assert_allclose(_tight_boxes(out.masks) / CFG.max_size, out.boxes, atol=2 / CFG.max_size)


def test_training_transform_is_a_function_of_the_generator():
    augment = TrainAugmentation(CFG)
    a = augment(_example(), np.random.default_rng(11))
    b = augment(_example(), np.random.default_rng(11))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.image.shape == (*CFG.input_size, 3)
    assert ((a.boxes >= 0) & (a.boxes <= 1)).all()


def test_small_boxes_are_discarded_in_training():
    ex = _example(size=(600, 900))  # boxes of 35x20 pixels become 12 x 11 at 320: kept
    cfg = dataclasses.replace(CFG, discard_box_width=20 / 320)
    out = TrainAugmentation(cfg, photometric=False, expand=False, crop=False, mirror=False)(ex, np.random.default_rng(0))
    assert len(out.labels) == 0
    kept = TrainAugmentation(CFG, photometric=False, expand=False, crop=False, mirror=False)(ex, np.random.default_rng(0))
    assert kept.labels.tolist() == [1, 3]
    np.testing.assert_allclose(kept.boxes, resize(ex, CFG).boxes / CFG.max_size)
