"""Mask pasting for the runtime (numpy, and numba where installed; no torch): prototype-grid masks ->
binary image masks.

Equal to yolact_torch.postprocess.paste_masks (bilinear resize with align_corners=False, > threshold,
cleared outside the box), but it interpolates only the pixels inside each box, with per-axis
bilinear taps, so its cost follows the boxes' area rather than N * H * W. The blend is compiled
with numba, because in numpy (a dozen calls per box, each a pass over the box) 100 detections
at 640x480 took longer than the post-processing before them. numba is optional (the `numba`
install extra, ~200 MB with llvmlite): without it the same float32 operations run as numpy
array expressions per box, which give the same masks bit for bit, more slowly.
"""

from __future__ import annotations

import mmap
import warnings

import numpy as np

try:
    import numba
    from numba.core.caching import FunctionCache
except ImportError:  # a host installed without the `numba` extra: _paste_boxes_numpy pastes
    numba = FunctionCache = None


def box_pixel_ranges(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative coordinates of one axis, float32 [N] each -> integer pixel ranges [first, stop) [N].

    The crop rule of yolact_torch.postprocess.box_region (no padding): x inside iff lo * size <= x < hi * size
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


def zeroed_masks(count: int, height: int, width: int) -> np.ndarray:
    """bool [count, H, W] of zeros in a fresh private anonymous mapping.

    The kernel maps its zero pages lazily, so only the pages pasting writes (those holding box
    rows, ~a quarter of 100 masks at 640x480) cost anything. np.zeros does the same only for
    blocks above glibc's mmap threshold, which rises to 32 MB once such a block is freed: 100
    masks at 640x480 (31 MB) then come from the heap and are cleared in full, 3 ms an image.
    """
    size = count * height * width
    if size == 0 or not hasattr(mmap, 'MAP_PRIVATE'):  # an empty stack; or not a POSIX host
        return np.zeros((count, height, width), dtype=bool)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(buffer, dtype=bool).reshape(count, height, width)


if numba is not None:  # only the compiled paste has a cache to repair
    class _RepairingCache(FunctionCache):
        """numba's on-disk cache of one function, except that an entry it cannot load (a file truncated
        or overwritten: numba raises from pickle) is dropped with one warning and compiled afresh, and
        the new machine code replaces it, instead of every later run failing."""

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as e:  # whatever unpickling garbage raises; only the cache read is inside
                name = f'{self._py_func.__module__}.{self._py_func.__qualname__}'
                warnings.warn(f'numba cache of {name} in {self._cache_path} is corrupt ({type(e).__name__}: {e}); '
                              'recompiling it', RuntimeWarning, stacklevel=2)
                self.flush()  # an empty index: the fresh compile is saved over the corrupt entry
                return None


def _compiled(function):
    """`function` compiled by numba on its first call (~0.4 s). The machine code is cached beside
    this module, in NUMBA_CACHE_DIR or in the user's cache folder, whichever is writable; with none
    (a read-only container) each process compiles afresh rather than failing at import. A corrupt
    cache is recompiled with a warning (_RepairingCache). nogil lets the throughput mode's lanes
    paste at the same time. No fastmath: products and sums must round one at a time, as numpy's
    and torch's do."""
    dispatcher = numba.njit(nogil=True)(function)
    try:
        dispatcher._cache = _RepairingCache(function)  # what Dispatcher.enable_caching (cache=True) sets
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        pass
    return dispatcher


def _paste_boxes_loop(masks, rows, x_first, x_stop, y_first, y_stop, x0, x1, wx0, wx1, y0, y1, wy0, wy1,
                      threshold, out):
    # Horizontal pass over the prototype rows a box needs, then a vertical blend per output row.
    # runtime/tensorrt/paste_kernel.py repeats these float32 operations in this order, so host and GPU
    # agree to the bit; torch's F.interpolate rounds some values differently in the last place,
    # which moves only pixels within an ulp or two of the threshold (tests/runtime/test_paste.py).
    horizontal = np.empty((masks.shape[1], out.shape[2]), np.float32)
    for i in range(rows.shape[0]):
        first, stop = x_first[i], x_stop[i]
        if stop <= first or y_stop[i] <= y_first[i]:
            continue
        grid = masks[rows[i]]
        columns = stop - first
        # Scalars and slices bound once: numba cannot hoist loads the bool stores might alias.
        taps0, taps1, weights0, weights1 = x0[first:stop], x1[first:stop], wx0[first:stop], wx1[first:stop]
        proto_first = y0[y_first[i]]
        for r in range(proto_first, y1[y_stop[i] - 1] + 1):
            source, target = grid[r], horizontal[r - proto_first]
            for c in range(columns):
                target[c] = weights0[c] * source[taps0[c]] + weights1[c] * source[taps1[c]]
        for y in range(y_first[i], y_stop[i]):
            top, bottom = horizontal[y0[y] - proto_first], horizontal[y1[y] - proto_first]
            top_weight, bottom_weight = wy0[y], wy1[y]
            line = out[i, y, first:stop]
            for c in range(columns):
                line[c] = top[c] * top_weight + bottom[c] * bottom_weight > threshold


def _paste_boxes_numpy(masks, rows, x_first, x_stop, y_first, y_stop, x0, x1, wx0, wx1, y0, y1, wy0, wy1,
                       threshold, out):
    """_paste_boxes_loop without numba: per box, the same float32 products and sums in the same
    order as numpy array expressions (each rounds once, as the loop's do), so the masks are equal."""
    for i in range(len(rows)):
        first, stop, top_first, top_stop = x_first[i], x_stop[i], y_first[i], y_stop[i]
        if stop <= first or top_stop <= top_first:
            continue
        proto_first = y0[top_first]
        source = masks[rows[i], proto_first:y1[top_stop - 1] + 1]
        horizontal = wx0[first:stop] * source[:, x0[first:stop]] + wx1[first:stop] * source[:, x1[first:stop]]
        ys = slice(top_first, top_stop)
        top, bottom = horizontal[y0[ys] - proto_first], horizontal[y1[ys] - proto_first]
        out[i, ys, first:stop] = top * wy0[ys, None] + bottom * wy1[ys, None] > threshold


_paste_boxes = _paste_boxes_numpy if numba is None else _compiled(_paste_boxes_loop)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5,
                *, rows: np.ndarray | None = None) -> np.ndarray:
    """Paste prototype-grid masks into the image, each only inside its box.

    masks: float [M, Hp, Wp] (the model's `masks` output rows; float16 is widened); boxes: float32
    [N, 4] xyxy relative (0..1, either order, not clipped); image_hw: (H, W) of the image in
    pixels; threshold: the model's mask_threshold (a pixel is set when the resized value >
    threshold); rows: int [N], the row of `masks` each box's mask is (default: 0..N-1, M = N),
    so a batch's kept detections are pasted without first copying their masks out.
    Returns bool [N, H, W]; pixels outside each box are False. N = 0 gives bool [0, H, W].
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, np.float32)
    rows = np.arange(len(boxes)) if rows is None else np.asarray(rows, np.int64).reshape(-1)
    rows_inside = len(rows) == 0 or 0 <= rows.min() <= rows.max() < len(masks)
    if masks.ndim != 3 or boxes.shape != (len(rows), 4) or not rows_inside:
        raise ValueError(f'paste_masks takes masks [N, Hp, Wp] and boxes [N, 4] (or rows [N] of masks); got masks '
                         f'{masks.shape}, boxes {boxes.shape} and rows {rows.shape}')
    out = zeroed_masks(len(rows), height, width)
    if len(rows) == 0 or height == 0 or width == 0:
        return out
    if masks.dtype != np.float32:  # widen only the rows pasted (exact for float16)
        masks, rows = masks[rows].astype(np.float32), np.arange(len(rows))
    proto_h, proto_w = masks.shape[1:]
    # The taps of an output pixel do not depend on the box: computed once per axis.
    x0, x1, wx0, wx1 = source_taps(width, proto_w)
    y0, y1, wy0, wy1 = source_taps(height, proto_h)
    x_first, x_stop = box_pixel_ranges(boxes[:, 0], boxes[:, 2], width)
    y_first, y_stop = box_pixel_ranges(boxes[:, 1], boxes[:, 3], height)
    _paste_boxes(np.ascontiguousarray(masks), rows, x_first, x_stop, y_first, y_stop, x0, x1, wx0, wx1,
                 y0, y1, wy0, wy1, np.float32(threshold), out)
    return out
