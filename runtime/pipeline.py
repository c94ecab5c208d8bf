"""From image files to Detections around any backend (numpy + cv2, no torch): loading
(runtime.images, shared with calibration), batching images of one size together (the model resizes
them inside), turning the model's padded outputs into Detections, and `predict_batches`, the same
over a stream of batches (video)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from runtime.backends.base import Backend, RawDetections
from runtime.contract import BOX_SCORES
from runtime.detections import Detections
from runtime.images import IMAGE_SUFFIXES, ImageLoadError, find_images, load_image  # noqa: F401 (the runtime's API too)
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


def kept_detections(raw: RawDetections, image: int, score_threshold: float) -> np.ndarray:
    """Indices (int64 [n]) of image `image`'s detections with score >= score_threshold (0 keeps
    all), among its first num_dets rows, in the model's order (score descending)."""
    scores = raw['scores'][image, :int(raw['num_dets'][image])].astype(np.float32)
    return np.flatnonzero(scores >= np.float32(score_threshold))


def make_detections(raw: RawDetections, image: int, keep: np.ndarray, image_hw: tuple[int, int],
                    masks: np.ndarray) -> Detections:
    """Detections of image `image` from its kept rows `keep` (kept_detections) and their pasted
    masks (bool [n, H, W]): boxes scaled to image pixels, ordered and clipped to the image (as the
    original's sanitize_coordinates); box_scores where the model has them (YOLACT++), else None."""
    height, width = image_hw
    scale = np.array([width, height, width, height], np.float32)
    pixels = raw['boxes'][image, keep].astype(np.float32) * scale
    pixels = np.concatenate([np.minimum(pixels[:, :2], pixels[:, 2:]), np.maximum(pixels[:, :2], pixels[:, 2:])], 1)
    pixels = np.clip(pixels, 0, scale)
    box_scores = raw[BOX_SCORES][image, keep].astype(np.float32) if BOX_SCORES in raw else None
    return Detections(pixels, raw['scores'][image, keep].astype(np.float32),
                      raw['classes'][image, keep].astype(np.int64), masks, (int(height), int(width)),
                      box_scores=box_scores)


def to_detections(raw: RawDetections, image_sizes: Sequence[tuple[int, int]], *, score_threshold: float,
                  mask_threshold: float) -> list[Detections]:
    """The model's padded outputs for a batch -> one Detections per image.

    raw: the RawDetections (runtime.backends.base) of B images; image_sizes: (H, W) of each original image.
    Keeps detections with score >= score_threshold (0 keeps all), scales boxes to image pixels
    (ordered, clipped to the image, as the original's sanitize_coordinates) and pastes each mask
    into its image on the host (value > mask_threshold, only inside its box).
    """
    results = []
    for b, image_hw in enumerate(image_sizes):
        keep = kept_detections(raw, b, score_threshold)
        masks = paste_masks(raw['masks'][b], raw['boxes'][b, keep], image_hw, mask_threshold, rows=keep)
        results.append(make_detections(raw, b, keep, image_hw, masks))
    return results


def same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of `images` grouped by (H, W), in order of each size's first image (ascending within a
    group): each group is one batch, since a batch holds images of one size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())


def predict(backend: Backend, images: Sequence[np.ndarray], *, score_threshold: float) -> list[Detections]:
    """Detections for images of any sizes (uint8 [H, W, 3] BGR each), in their order: each size is one
    `backend.detect` call at that size (the model resizes inside; masks pasted with the model's
    mask_threshold, on the GPU where the backend can)."""
    ((_, detections),) = predict_batches(backend, [images], score_threshold=score_threshold)
    return detections


def predict_batches(backend: Backend, image_batches: Iterable[Sequence[np.ndarray]], *,
                    score_threshold: float) -> Iterator[tuple[Sequence[np.ndarray], list[Detections]]]:
    """(images, their Detections) for each batch of images (uint8 [H, W, 3] BGR, any sizes), in order.

    The images of a batch go to the model at their own size, one model batch per size (a video's
    frames share one); the Detections come back in the batch's order. A backend with
    `detect_batches` (the TensorRT backend: --streams N, masks pasted on its GPU) gets the model
    batches as a stream, so it overlaps them; others get one `detect` call each."""
    meta = backend.metadata
    taken: deque = deque()

    def model_inputs() -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
        for images in image_batches:
            groups = same_size_groups(images)
            taken.append((images, groups))
            for group in groups:
                yield np.stack([images[i] for i in group]), [images[i].shape[:2] for i in group]

    detect_batches = getattr(backend, 'detect_batches', None)
    if detect_batches is not None:
        results = detect_batches(model_inputs(), score_threshold=score_threshold, mask_threshold=meta.mask_threshold)
    else:
        results = (backend.detect(inputs, image_sizes, score_threshold=score_threshold,
                                  mask_threshold=meta.mask_threshold) for inputs, image_sizes in model_inputs())
    done: list[list[Detections]] = []
    for detections in results:
        done.append(detections)
        images, groups = taken[0]
        if len(done) == len(groups):
            taken.popleft()
            ordered: list[Detections | None] = [None] * len(images)
            for group, group_detections in zip(groups, done):
                for index, dets in zip(group, group_detections):
                    ordered[index] = dets
            done = []
            yield images, ordered
