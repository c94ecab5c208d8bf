"""Drawing: masks tinted inside, pixels far from every detection untouched, labels drawn."""

import numpy as np
import pytest

from runtime.detections import Detections
from runtime.draw import draw_detections, instance_color


def test_masks_are_tinted_and_the_rest_is_untouched():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 30:50, 40:70] = True
    masks[1, 35:45, 10:20] = True
    dets = Detections(np.array([[40, 30, 70, 50], [10, 35, 20, 45]], np.float32), np.array([0.9, 0.4], np.float32),
                      np.array([1, 0]), masks, (60, 80))
    drawn = draw_detections(image, dets, ('circle', 'triangle'))
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 100).all(), 'the input image is not modified'
    for i, (y, x) in enumerate([(40, 55), (40, 15)]):  # mask centres, away from outlines and labels
        expected = np.array(image[y, x], float) * 0.55 + np.array(instance_color(i)) * 0.45
        assert np.abs(drawn[y, x] - expected).max() <= 1
    np.testing.assert_array_equal(drawn[:, :5], image[:, :5])  # nothing drawn at the left edge
    np.testing.assert_array_equal(drawn[55:], image[55:])  # nor below the lowest box


def test_colours_differ_between_neighbours():
    colours = [instance_color(i) for i in range(10)]
    assert len(set(colours)) == 10


def test_size_mismatch_is_refused():
    nothing = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                         np.zeros((0, 20, 20), bool), (20, 20))
    with pytest.raises(ValueError, match='detections are for'):
        draw_detections(np.zeros((10, 10, 3), np.uint8), nothing, ('a',))
