"""Mask pasting for the runtime (numpy, no torch): prototype-grid masks -> binary image masks.

Equal to model.postprocess.paste_masks (bilinear resize with align_corners=False, > threshold,
cleared outside the box), but it interpolates only the pixels inside each box, with per-box
separable bilinear weights, so its cost follows the boxes' area rather than N * H * W.
"""

from __future__ import annotations

import numpy as np

# Float32 scratch per box region is a few arrays of rows x columns; past this many bytes a box
# is processed in bands of rows (a full-image box on a 4K frame would otherwise take ~0.3 GB).
DEFAULT_MEMORY_BUDGET = 64 * 1024 * 1024
_SCRATCH_ARRAYS = 2  # float32 [rows, columns] arrays alive at once per band of rows


def box_pixel_ranges(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative coordinates of one axis, float32 [N] each -> integer pixel ranges [first, stop) [N].

    The crop rule of model.postprocess.box_region (no padding): x inside iff lo * size <= x < hi * size
    after ordering and clamping to [0, size]; for integer x that is ceil(lo) <= x < ceil(hi).
    """
    size_f = np.float32(size)
    low = np.maximum(np.minimum(lo, hi) * size_f, np.float32(0))
    high = np.minimum(np.maximum(lo, hi) * size_f, size_f)
    return np.ceil(low).astype(np.int64), np.ceil(high).astype(np.int64)


def source_taps(out_size: int, in_size: int):
    """Bilinear taps (align_corners=False) of every output pixel of an axis resized from in_size to
    out_size: (index0 int64 [out_size], index1 int64, weight0 float32, weight1 float32).

    Same float32 arithmetic as torch's CPU kernel: src = max(scale * (dst + 0.5) - 0.5, 0),
    index0 = min(floor(src), in_size - 1), weight1 = clamp(src - index0, 0, 1).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    weight1 = np.clip(src - index0.astype(np.float32), np.float32(0), np.float32(1))
    index1 = np.minimum(index0 + 1, in_size - 1)
    return index0, index1, np.float32(1) - weight1, weight1


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5,
                *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Paste prototype-grid masks into the image, each only inside its box.

    masks: float32 [N, Hp, Wp] (the model's `masks` output rows); boxes: float32 [N, 4] xyxy
    relative (0..1, either order, not clipped); image_hw: (H, W) of the image in pixels;
    threshold: the model's mask_threshold (a pixel is set when the resized value > threshold).
    memory_budget: bytes of float32 scratch per step; larger boxes are done in bands of rows.
    Returns bool [N, H, W]; pixels outside each box are False. N = 0 gives bool [0, H, W].
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if masks.ndim != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f'paste_masks takes masks [N, Hp, Wp] and boxes [N, 4]; got masks {masks.shape} '
                         f'and boxes {boxes.shape}')
    out = np.zeros((masks.shape[0], height, width), dtype=bool)
    if masks.shape[0] == 0:
        return out
    proto_h, proto_w = masks.shape[1:]
    threshold = np.float32(threshold)
    # The taps of an output pixel do not depend on the box: compute them once per axis.
    x0, x1, wx0, wx1 = source_taps(width, proto_w)
    y0, y1, wy0, wy1 = source_taps(height, proto_h)
    wy0, wy1 = wy0[:, None], wy1[:, None]
    x_first, x_stop = box_pixel_ranges(boxes[:, 0], boxes[:, 2], width)
    y_first, y_stop = box_pixel_ranges(boxes[:, 1], boxes[:, 3], height)
    for i in np.flatnonzero((x_stop > x_first) & (y_stop > y_first)):
        columns = slice(x_first[i], x_stop[i])
        # Horizontal pass on the prototype rows the box needs, then a vertical blend per output
        # row: the order torch's kernel sums in, so the values agree to the bit.
        proto_first, proto_stop = y0[y_first[i]], y1[y_stop[i] - 1] + 1
        horizontal = masks[i, proto_first:proto_stop]                               # [h, Wp]
        horizontal = wx0[columns] * horizontal[:, x0[columns]] + wx1[columns] * horizontal[:, x1[columns]]
        band = max(1, memory_budget // (_SCRATCH_ARRAYS * 4 * (x_stop[i] - x_first[i])))
        for band_first in range(y_first[i], y_stop[i], band):
            rows = slice(band_first, min(band_first + band, y_stop[i]))
            top = horizontal[y0[rows] - proto_first]
            bottom = horizontal[y1[rows] - proto_first]
            top *= wy0[rows]
            bottom *= wy1[rows]
            top += bottom
            np.greater(top, threshold, out=out[i, rows, columns])
    return out
