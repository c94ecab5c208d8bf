"""Training augmentation as in the original's SSDAugmentation, and the plain eval transform.

Every transform works on an `Example` in image pixels and draws its randomness from the
`numpy.random.Generator` it is given (never from global state), so a training step is a pure
function of (seed, iteration) and a resumed run sees the very same images.

Order (the original's): photometric distortion -> expand -> random crop -> mirror -> resize to
the config's square size (dropping boxes smaller than the config's discard size) -> boxes made
relative. Normalisation is not done here: the model's `Normalize` does it, as at deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from yolact_torch.config import YolactConfig

# The original's PhotometricDistort ranges (cv2's float HSV: hue in degrees, saturation 0..1).
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18.0
BRIGHTNESS_DELTA = 32.0
EXPAND_MAX_RATIO = 4.0
CROP_MIN_SIDE = 0.3  # crop side as a share of the image side
CROP_ASPECT_RANGE = (0.5, 2.0)  # crop height / width
CROP_TRIALS = 50
# The original chooses among six modes; one of them is "no crop". Its IoU limits never reject a
# crop (its own comment calls that check bugged), which is the behaviour kept here.
CROP_SKIP_PROBABILITY = 1 / 6
CV2_MAX_CHANNELS = 512  # cv2.resize handles at most this many channels at once


@dataclass
class Example:
    """image: float32 [H, W, 3] BGR, 0..255. masks: uint8 [N, H, W] 0/1. boxes: float32 [N, 4]
    x1, y1, x2, y2 (image pixels until `to_relative`, then 0..1). labels: int64 [N] 0-based."""

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    def select(self, keep: np.ndarray) -> 'Example':
        return replace(self, masks=self.masks[keep], boxes=self.boxes[keep], labels=self.labels[keep])


def photometric_distort(ex: Example, rng: np.random.Generator) -> Example:
    """Random brightness, then contrast before or after random saturation and hue (each applied
    with probability 1/2). Pixel values are clipped to 0..255 at the end."""
    image = ex.image.copy()
    if rng.integers(2):
        image += rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        image *= rng.uniform(*CONTRAST_RANGE)
    hsv = cv2.cvtColor(np.clip(image, 0, 255), cv2.COLOR_BGR2HSV)
    if rng.integers(2):
        hsv[..., 1] *= rng.uniform(*SATURATION_RANGE)
    if rng.integers(2):
        hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-HUE_DELTA, HUE_DELTA), 360.0)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.integers(2):
        image *= rng.uniform(*CONTRAST_RANGE)
    return replace(ex, image=np.clip(image, 0, 255).astype(np.float32))


def expand(ex: Example, rng: np.random.Generator, fill_bgr) -> Example:
    """With probability 1/2, place the image at a random spot of a canvas up to 4x its size filled
    with `fill_bgr` (the normalisation mean, so the padding normalises to zero)."""
    if rng.integers(2):
        return ex
    height, width = ex.image.shape[:2]
    ratio = rng.uniform(1, EXPAND_MAX_RATIO)
    left = int(rng.uniform(0, width * ratio - width))
    top = int(rng.uniform(0, height * ratio - height))
    out_h, out_w = int(height * ratio), int(width * ratio)
    image = np.empty((out_h, out_w, 3), np.float32)
    image[:] = np.asarray(fill_bgr, np.float32)
    image[top:top + height, left:left + width] = ex.image
    masks = np.zeros((len(ex.masks), out_h, out_w), np.uint8)
    masks[:, top:top + height, left:left + width] = ex.masks
    return Example(image, masks, ex.boxes + np.float32([left, top, left, top]), ex.labels)


def random_crop(ex: Example, rng: np.random.Generator) -> Example:
    """The original's RandomSampleCrop: a crop of 0.3..1 of each side with height/width in
    0.5..2, keeping the instances whose box centre lies inside it (boxes clipped to the crop)."""
    height, width = ex.image.shape[:2]
    while True:
        if rng.uniform() < CROP_SKIP_PROBABILITY:
            return ex
        for _ in range(CROP_TRIALS):
            w = rng.uniform(CROP_MIN_SIDE * width, width)
            h = rng.uniform(CROP_MIN_SIDE * height, height)
            if not CROP_ASPECT_RANGE[0] <= h / w <= CROP_ASPECT_RANGE[1]:
                continue
            left = rng.uniform(0, width - w)
            top = rng.uniform(0, height - h)
            x1, y1, x2, y2 = int(left), int(top), int(left + w), int(top + h)
            centers = (ex.boxes[:, :2] + ex.boxes[:, 2:]) / 2
            inside = ((centers[:, 0] > x1) & (centers[:, 1] > y1) & (centers[:, 0] < x2) & (centers[:, 1] < y2))
            if not inside.any():
                continue
            kept = ex.select(inside)
            boxes = kept.boxes.copy()
            boxes[:, :2] = np.maximum(boxes[:, :2], [x1, y1]) - [x1, y1]
            boxes[:, 2:] = np.minimum(boxes[:, 2:], [x2, y2]) - [x1, y1]
            return Example(ex.image[y1:y2, x1:x2].copy(), kept.masks[:, y1:y2, x1:x2].copy(),
                           boxes.astype(np.float32), kept.labels)


def mirror(ex: Example, rng: np.random.Generator) -> Example:
    """With probability 1/2, flip left-right."""
    if rng.integers(2):
        return ex
    width = ex.image.shape[1]
    boxes = ex.boxes.copy()
    boxes[:, 0], boxes[:, 2] = width - ex.boxes[:, 2], width - ex.boxes[:, 0]
    return Example(ex.image[:, ::-1].copy(), ex.masks[:, :, ::-1].copy(), boxes, ex.labels)


def resize_masks(masks: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W] 0/1 -> uint8 [N, h, w] 0/1: bilinear, then > 0.5 (as the original's loss
    binarises its downsampled ground truth)."""
    height, width = size_hw
    if len(masks) == 0:
        return np.zeros((0, height, width), np.uint8)
    out = []
    for start in range(0, len(masks), CV2_MAX_CHANNELS):
        chunk = masks[start:start + CV2_MAX_CHANNELS].transpose(1, 2, 0).astype(np.float32)
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(resized.reshape(height, width, -1).transpose(2, 0, 1))
    return (np.concatenate(out) > 0.5).astype(np.uint8)


def resize(ex: Example, cfg: YolactConfig) -> Example:
    """Resize to cfg.input_size (aspect ratio not kept, cv2.INTER_LINEAR)."""
    height, width = ex.image.shape[:2]
    out_h, out_w = cfg.input_size
    image = cv2.resize(ex.image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    boxes = ex.boxes * np.float32([out_w / width, out_h / height, out_w / width, out_h / height])
    return Example(image.astype(np.float32), resize_masks(ex.masks, (out_h, out_w)), boxes, ex.labels)


def to_relative(ex: Example) -> Example:
    height, width = ex.image.shape[:2]
    return replace(ex, boxes=(ex.boxes / np.float32([width, height, width, height])).astype(np.float32))


def discard_small(ex: Example, cfg: YolactConfig) -> Example:
    """Drop instances whose relative box is not wider than cfg.discard_box_width and taller than
    cfg.discard_box_height (boxes must be relative)."""
    w = ex.boxes[:, 2] - ex.boxes[:, 0]
    h = ex.boxes[:, 3] - ex.boxes[:, 1]
    return ex.select((w > cfg.discard_box_width) & (h > cfg.discard_box_height))


@dataclass(frozen=True)
class TrainAugmentation:
    """The training transform; each stage can be turned off (all on is the original's choice)."""

    cfg: YolactConfig
    photometric: bool = True
    expand: bool = True
    crop: bool = True
    mirror: bool = True

    def __call__(self, ex: Example, rng: np.random.Generator) -> Example:
        if self.photometric:
            ex = photometric_distort(ex, rng)
        if self.expand:
            ex = expand(ex, rng, self.cfg.mean_bgr)
        if self.crop:
            ex = random_crop(ex, rng)
        if self.mirror:
            ex = mirror(ex, rng)
        return discard_small(to_relative(resize(ex, self.cfg)), self.cfg)


def eval_transform(ex: Example, cfg: YolactConfig) -> Example:
    """Resize to the model size and make boxes relative; nothing random, nothing discarded."""
    return to_relative(resize(ex, cfg))
