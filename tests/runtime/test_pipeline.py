"""Image loading (grayscale, alpha, 16-bit, broken files), folder scanning, resizing, batching and
the conversion of the model's padded outputs into Detections."""

import cv2
import numpy as np
import pytest

from runtime.paste import paste_masks
from runtime.pipeline import ImageLoadError, batches, find_images, load_image, resize_to_input, to_detections


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_color_image_loads_unchanged(tmp_path, rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'c.png'), image)
    np.testing.assert_array_equal(load_image(tmp_path / 'c.png'), image)


def test_grayscale_becomes_three_equal_channels(tmp_path, rng):
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'g.png'), gray)
    loaded = load_image(tmp_path / 'g.png')
    assert loaded.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_alpha_is_dropped(tmp_path, rng):
    bgra = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), bgra)
    np.testing.assert_array_equal(load_image(tmp_path / 'a.png'), bgra[..., :3])


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    deep = np.array([[[0, 257, 65535], [128, 32896, 65407]]], np.uint16)
    cv2.imwrite(str(tmp_path / 'd.png'), deep)
    loaded = load_image(tmp_path / 'd.png')
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, [[[0, 1, 255], [0, 128, 255]]])


@pytest.mark.parametrize('content, message', [(b'', 'empty file'), (b'GIF89a nonsense', 'not an image OpenCV can decode')])
def test_broken_files_raise_a_named_error(tmp_path, content, message):
    path = tmp_path / 'broken.jpg'
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(path)
    assert 'broken.jpg' in str(info.value)
    with pytest.raises(ImageLoadError, match='cannot read'):
        load_image(tmp_path / 'missing.jpg')


def test_find_images_recurses_by_suffix(tmp_path):
    (tmp_path / 'sub').mkdir()
    for name in ('b.JPG', 'a.png', 'sub/c.tiff', 'notes.txt', 'sub/x.json'):
        (tmp_path / name).write_bytes(b'x')
    assert find_images(tmp_path) == [tmp_path / 'a.png', tmp_path / 'b.JPG', tmp_path / 'sub' / 'c.tiff']
    assert find_images(tmp_path / 'notes.txt') == [tmp_path / 'notes.txt']  # a named file is always tried
    with pytest.raises(ImageLoadError, match='no such file or folder'):
        find_images(tmp_path / 'nope')


def test_resize_and_batches(rng):
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    resized = resize_to_input(image, (32, 40))
    np.testing.assert_array_equal(resized, cv2.resize(image, (40, 32), interpolation=cv2.INTER_LINEAR))
    assert resize_to_input(image, (48, 64)) is image
    assert list(batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match='at least 1'):
        list(batches(range(3), 0))


def test_to_detections_thresholds_scales_and_pastes(rng):
    dets_max, proto = 6, (10, 10)
    raw = {
        'num_dets': np.array([3, 0], np.int32),
        'boxes': np.zeros((2, dets_max, 4), np.float32),
        'scores': np.zeros((2, dets_max), np.float32),
        'classes': np.zeros((2, dets_max), np.int32),
        'masks': rng.random((2, dets_max, *proto), dtype=np.float32),
    }
    raw['boxes'][0, :3] = [[0.1, 0.2, 0.5, 0.6], [0.9, 0.8, 0.3, -0.2], [0.0, 0.0, 1.2, 1.0]]
    raw['scores'][0, :4] = [0.9, 0.5, 0.2, 0.95]  # the 4th row is past num_dets: padding
    raw['classes'][0, :3] = [2, 0, 1]
    first, second = to_detections(raw, [(40, 50), (7, 9)], score_threshold=0.5, mask_threshold=0.5)

    assert len(first) == 2 and len(second) == 0 and second.masks.shape == (0, 7, 9)
    np.testing.assert_array_equal(first.scores, np.float32([0.9, 0.5]))  # >= threshold, padding ignored
    np.testing.assert_array_equal(first.classes, [2, 0])
    assert first.classes.dtype == np.int64
    # Pixels, ordered corners, clipped to the image.
    np.testing.assert_allclose(first.boxes, [[5, 8, 25, 24], [15, 0, 45, 32]], rtol=1e-6)
    expected_masks = paste_masks(raw['masks'][0, :2], raw['boxes'][0, :2], (40, 50), 0.5)
    np.testing.assert_array_equal(first.masks, expected_masks)

    everything, _ = to_detections(raw, [(40, 50), (7, 9)], score_threshold=0, mask_threshold=0.5)
    assert len(everything) == 3
