"""From image files to Detections around any backend (numpy + cv2, no torch): loading and resizing
to the model input (model.images, shared with calibration), batching, and turning the model's
padded outputs into Detections."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from model.images import IMAGE_SUFFIXES, ImageLoadError, find_images, load_image, resize_to_input  # noqa: F401 (the runtime's API too)
from runtime.backends.base import Backend, RawDetections
from runtime.detections import Detections
from runtime.paste import paste_masks


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
