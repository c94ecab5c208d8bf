"""Image loading (grayscale, alpha, 16-bit, broken files), folder scanning, batching (one size per
model batch, results in input order) and the conversion of the model's padded outputs into Detections."""

import cv2
import numpy as np
import pytest

from runtime.paste import paste_masks
from yolact_torch.config import metadata_from_config, yolact_tiny
from runtime.backends.base import Backend
from runtime.pipeline import (ImageLoadError, batches, find_images, load_image, predict, predict_batches,
                              same_size_groups, to_detections)


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


def test_batches():
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


class SizeRecordingBackend(Backend):
    """A stand-in model that records the shape of every batch it gets; each image's one detection has
    the image's first pixel / 255 as its score, so results show which image they belong to."""

    name = 'size-recording'

    def __init__(self, path, streamed=False):
        super().__init__(path)
        self.shapes = []
        if streamed:  # the TensorRT backend's shape: batches as a stream
            self.detect_batches = self._detect_batches

    def _load_impl(self):
        self.metadata = metadata_from_config(yolact_tiny)

    def _infer_impl(self, images):
        self.shapes.append(images.shape)
        batch, dets = len(images), self.metadata.max_dets
        scores = np.zeros((batch, dets), np.float32)
        scores[:, 0] = images[:, 0, 0, 0] / 255
        boxes = np.zeros((batch, dets, 4), np.float32)
        boxes[:, 0] = [0, 0, 1, 1]
        return {'num_dets': np.ones(batch, np.int32), 'boxes': boxes, 'scores': scores,
                'classes': np.zeros((batch, dets), np.int32), 'masks': np.ones((batch, dets, 4, 4), np.float32)}

    def _close_impl(self):
        pass

    def _detect_batches(self, inputs, *, score_threshold, mask_threshold):
        for images, image_sizes in inputs:
            yield self.detect(images, image_sizes, score_threshold=score_threshold, mask_threshold=mask_threshold)


def mixed_images():
    """Six images of three sizes, interleaved; image i's first pixel is 10 * (i + 1)."""
    sizes = [(5, 7), (40, 30), (5, 7), (1, 1), (40, 30), (5, 7)]
    images = [np.zeros((*size, 3), np.uint8) for size in sizes]
    for i, image in enumerate(images):
        image[0, 0, 0] = 10 * (i + 1)
    return images


def test_same_size_groups_keep_first_appearance_order():
    assert same_size_groups(mixed_images()) == [[0, 2, 5], [1, 4], [3]]


@pytest.mark.parametrize('streamed', [False, True], ids=['detect', 'detect_batches'])
def test_images_go_in_at_their_own_size_one_size_per_batch(tmp_path, streamed):
    images = mixed_images()
    with SizeRecordingBackend(tmp_path / 'm', streamed=streamed) as backend:
        detections = predict(backend, images, score_threshold=0)
        assert backend.shapes == [(3, 5, 7, 3), (2, 40, 30, 3), (1, 1, 1, 3)]
        # Results come back in the input order, each sized to its own image.
        assert [float(d.scores[0]) for d in detections] == pytest.approx([10 * (i + 1) / 255 for i in range(6)])
        assert [d.image_size for d in detections] == [image.shape[:2] for image in images]
        assert [d.masks.shape[1:] for d in detections] == [image.shape[:2] for image in images]
        # Over a stream of batches, each batch comes back whole and in order.
        streamed_out = list(predict_batches(backend, [images[:3], images[3:]], score_threshold=0))
    assert [len(got) for got, _ in streamed_out] == [3, 3]
    assert [float(d.scores[0]) for _, dets in streamed_out for d in dets] == \
        pytest.approx([10 * (i + 1) / 255 for i in range(6)])
