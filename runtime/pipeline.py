"""From image files to Detections around any backend (numpy + cv2, no torch): loading, resizing
to the model input, batching, and turning the model's padded outputs into Detections."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from runtime.backends.base import Backend, RawDetections
from runtime.detections import Detections
from runtime.paste import paste_masks

# File suffixes taken as images when a folder is scanned (files named explicitly are always tried).
IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.jpe', '.png', '.bmp', '.dib', '.tif', '.tiff', '.webp',
                            '.jp2', '.pbm', '.pgm', '.ppm', '.pnm', '.sr', '.ras'})


class ImageLoadError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] BGR.

    Grayscale is expanded to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits (value / 257, rounded), EXIF orientation is applied. Raises ImageLoadError
    for a missing, unreadable or unsupported file.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: that cannot report why it failed
    except OSError as e:
        raise ImageLoadError(f'{path}: cannot read ({e.strerror or e})') from None
    if data.size == 0:
        raise ImageLoadError(f'{path}: empty file')
    # IMREAD_COLOR converts grayscale and drops alpha; IMREAD_ANYDEPTH keeps 16 bits to scale here.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageLoadError(f'{path}: not an image OpenCV can decode (corrupt or unsupported format)')
    if image.dtype == np.uint16:
        image = np.rint(image.astype(np.float32) / np.float32(257)).astype(np.uint8)  # 65535 -> 255
    elif image.dtype != np.uint8:
        raise ImageLoadError(f'{path}: {image.dtype} pixels are not supported: convert it to 8- or 16-bit')
    return image


def find_images(path: str | Path) -> list[Path]:
    """The image files under a folder (recursively, by suffix, sorted), or [path] for a file.

    Raises ImageLoadError when the path does not exist.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageLoadError(f'{path}: no such file or folder')
    return sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def resize_to_input(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] at the model's input_size (h, w): bilinear (cv2.INTER_LINEAR),
    aspect ratio not kept, as the original's evaluation."""
    height, width = input_size
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f'batch size must be at least 1, got {size}')
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def to_detections(raw: RawDetections, image_sizes: Sequence[tuple[int, int]], *, score_threshold: float,
                  mask_threshold: float) -> list[Detections]:
    """The model's padded outputs for a batch -> one Detections per image.

    raw: the RAW_OUTPUT_NAMES arrays of B images; image_sizes: (H, W) of each original image.
    Keeps detections with score >= score_threshold (0 keeps all), scales boxes to image pixels
    (ordered, clipped to the image, as the original's sanitize_coordinates) and pastes each mask
    into its image (value > mask_threshold, only inside its box).
    """
    results = []
    for b, (height, width) in enumerate(image_sizes):
        n = int(raw['num_dets'][b])
        scores = raw['scores'][b, :n].astype(np.float32)
        keep = np.flatnonzero(scores >= np.float32(score_threshold))
        boxes = raw['boxes'][b, keep].astype(np.float32)
        scale = np.array([width, height, width, height], np.float32)
        pixels = boxes * scale
        pixels = np.concatenate([np.minimum(pixels[:, :2], pixels[:, 2:]), np.maximum(pixels[:, :2], pixels[:, 2:])], 1)
        pixels = np.clip(pixels, 0, scale)
        masks = paste_masks(raw['masks'][b, keep], boxes, (height, width), mask_threshold)
        results.append(Detections(pixels, scores[keep], raw['classes'][b, keep].astype(np.int64), masks,
                                  (int(height), int(width))))
    return results


def predict(backend: Backend, images: Sequence[np.ndarray], *, score_threshold: float) -> list[Detections]:
    """Detections for one batch of images of any size (uint8 [H, W, 3] BGR each): resized to the
    model input, run in one `backend.infer` call, masks pasted with the model's mask_threshold."""
    meta = backend.metadata
    raw = backend.infer(np.stack([resize_to_input(image, meta.input_size) for image in images]))
    return to_detections(raw, [image.shape[:2] for image in images], score_threshold=score_threshold,
                         mask_threshold=meta.mask_threshold)
