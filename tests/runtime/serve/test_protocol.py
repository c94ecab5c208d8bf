"""The served model's wire format: responses decode to the Detections that were encoded, and the
request checks refuse what Triton's own checks cannot see."""

import dataclasses

import numpy as np
import pytest

from runtime.detections import Detections
from runtime.serve.protocol import (BOX_SCORES_OUTPUT, OUTPUTS, ServeError, check_request, decode_detections,
                                    encode_detections)


def random_detections(rng, count, height=37, width=53):
    masks = rng.random((count, height, width)) > 0.6
    boxes = np.sort(rng.uniform(0, min(height, width), (count, 2, 2)), axis=1).reshape(count, 4).astype(np.float32)
    return Detections(boxes, np.sort(rng.random(count).astype(np.float32))[::-1].copy(),
                      rng.integers(0, 80, count), masks, (height, width))


@pytest.mark.parametrize('count', [0, 1, 7])
def test_decode_inverts_encode(count):
    dets = random_detections(np.random.default_rng(count), count)
    encoded = encode_detections(dets)
    assert {name: value.shape[:2] for name, value in encoded.items() if name != 'masks'} == {
        'boxes': (1, count), 'scores': (1, count), 'classes': (1, count), 'mask_lengths': (1, count)}
    assert encoded['masks'].shape == (1, encoded['mask_lengths'].sum()) and encoded['masks'].dtype == np.uint8
    decoded = decode_detections(encoded, dets.image_size)
    np.testing.assert_array_equal(decoded.boxes, dets.boxes)
    np.testing.assert_array_equal(decoded.scores, dets.scores)
    np.testing.assert_array_equal(decoded.classes, dets.classes)
    np.testing.assert_array_equal(decoded.masks, dets.masks)
    assert decoded.image_size == dets.image_size and decoded.masks.dtype == bool


@pytest.mark.parametrize('count', [0, 4])
def test_a_yolact_plus_models_box_scores_travel_when_present(count):
    """Detections with box_scores (YOLACT++) add BOX_SCORES_OUTPUT to the response and get them back;
    without, the response is OUTPUTS alone and the decoded Detections have none."""
    rng = np.random.default_rng(10 + count)
    plain = random_detections(rng, count)
    dets = dataclasses.replace(plain, box_scores=rng.random(count).astype(np.float32))
    encoded = encode_detections(dets)
    assert list(encoded) == [*OUTPUTS, BOX_SCORES_OUTPUT]
    assert encoded[BOX_SCORES_OUTPUT].shape == (1, count) and encoded[BOX_SCORES_OUTPUT].dtype == np.float32
    decoded = decode_detections(encoded, dets.image_size)
    np.testing.assert_array_equal(decoded.box_scores, dets.box_scores)
    np.testing.assert_array_equal(decoded.scores, dets.scores)
    assert list(encode_detections(plain)) == list(OUTPUTS)
    assert decode_detections(encode_detections(plain), plain.image_size).box_scores is None


def test_masks_travel_compressed():
    """RLE counts, not pixels: 100 blob masks on a 480 x 640 image take a small fraction of their bool size."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:480, :640]
    centers = rng.uniform([0, 0], [480, 640], (100, 2))
    masks = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 < 40 ** 2 for cy, cx in centers])
    dets = Detections(np.zeros((100, 4), np.float32), np.ones(100, np.float32), np.zeros(100, np.int64), masks,
                      (480, 640))
    mask_bytes = encode_detections(dets)['masks'].size
    assert mask_bytes < masks.size // 100


def test_check_request_takes_one_image_and_a_threshold():
    image = np.zeros((1, 4, 6, 3), np.uint8)
    checked, threshold = check_request(image, np.array([[0.5]], np.float32), max_pixels=24)
    assert checked.shape == (4, 6, 3) and threshold == 0.5
    assert check_request(image, None, max_pixels=24)[1] == 0.3


@pytest.mark.parametrize('shape, threshold, message', [
    ((2, 4, 6, 3), None, 'one image per request'),
    ((1, 0, 6, 3), None, 'empty'),
    ((1, 5, 5, 3), None, 'too large'),
    ((1, 4, 6, 3), 1.5, 'in 0..1'),
])
def test_check_request_refuses(shape, threshold, message):
    with pytest.raises(ServeError, match=message):
        check_request(np.zeros(shape, np.uint8), None if threshold is None else np.array([[threshold]], np.float32),
                      max_pixels=24)


def test_check_request_refuses_an_image_beyond_a_served_engines_profile():
    """An engine takes image sides up to its profile's maximum: a side above is the request's
    fault (400), found before the batch runs, not an engine error failing every request batched with it."""
    assert check_request(np.zeros((1, 8, 6, 3), np.uint8), None, max_pixels=100, max_image=(8, 6))[0].shape == (8, 6, 3)
    for shape in [(1, 9, 6, 3), (1, 4, 7, 3)]:
        with pytest.raises(ServeError, match=r'larger than the served engine takes \(8 x 6\): downscale'):
            check_request(np.zeros(shape, np.uint8), None, max_pixels=100, max_image=(8, 6))
