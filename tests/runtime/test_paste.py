"""runtime.paste (numpy, box region only) against the torch reference model.postprocess.paste_masks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.postprocess import paste_masks as reference_paste
from runtime.paste import paste_masks


def random_case(rng, n, proto_hw):
    masks = rng.random((n, *proto_hw), dtype=np.float32)
    low = rng.uniform(-0.2, 0.9, (n, 2)).astype(np.float32)
    boxes = np.concatenate([low, low + rng.uniform(0, 0.7, (n, 2)).astype(np.float32)], axis=1)
    boxes[::4] = boxes[::4][:, [2, 3, 0, 1]]  # corners in either order
    boxes[1] = [0, 0, 1, 1]  # the whole image
    boxes[2, 2] = boxes[2, 0]  # zero width
    return masks, boxes


@pytest.mark.parametrize('image_hw', [(480, 640), (550, 550), (37, 201), (333, 17), (9, 12)])
def test_paste_equals_the_torch_reference(image_hw):
    rng = np.random.default_rng(sum(image_hw))
    masks, boxes = random_case(rng, 24, (69, 69))
    got = paste_masks(masks, boxes, image_hw, 0.5)
    expected = reference_paste(torch.from_numpy(masks), torch.from_numpy(boxes), image_hw, 0.5).numpy()
    assert got.dtype == bool and got.shape == (24, *image_hw)
    differ = got != expected
    if differ.any():  # allowed only where float rounding decides a value at the threshold itself
        resized = F.interpolate(torch.from_numpy(masks)[None], size=image_hw, mode='bilinear',
                                align_corners=False)[0].numpy()
        assert np.abs(resized[differ] - 0.5).max() < 1e-6, f'{differ.sum()} pixels differ'
    assert got[1].any() and not got[2].any()


def test_memory_budget_bands_give_the_same_masks():
    rng = np.random.default_rng(1)
    masks, boxes = random_case(rng, 6, (40, 30))
    whole = paste_masks(masks, boxes, (200, 300), 0.4)
    banded = paste_masks(masks, boxes, (200, 300), 0.4, memory_budget=1)  # one row at a time
    np.testing.assert_array_equal(whole, banded)
    assert whole.any()


def test_threshold_is_strict_and_from_the_caller():
    masks = np.full((1, 4, 4), 0.5, np.float32)
    boxes = np.array([[0, 0, 1, 1]], np.float32)
    assert not paste_masks(masks, boxes, (8, 8), 0.5).any()
    assert paste_masks(masks, boxes, (8, 8), 0.25).all()


def test_no_detections_give_an_empty_stack_of_image_size():
    out = paste_masks(np.zeros((0, 20, 20), np.float32), np.zeros((0, 4), np.float32), (48, 64), 0.5)
    assert out.shape == (0, 48, 64) and out.dtype == bool


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match='masks \\[N, Hp, Wp\\] and boxes \\[N, 4\\]'):
        paste_masks(np.zeros((2, 5, 5), np.float32), np.zeros((3, 4), np.float32), (10, 10), 0.5)
