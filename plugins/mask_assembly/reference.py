"""Mask assembly, numpy reference: the readable definition of the `yolact::MaskAssembly` op.

For each detection: the linear combination of the prototypes with the detection's coefficients,
sigmoid, then crop to the detection's box grown by `crop_padding` prototype pixels (the original's
`crop`, dbolya/yolact layers/output_utils.py). Arithmetic in float32; float16 inputs are upcast.

Coordinate spaces: boxes are xyxy relative (0..1); masks are on the prototype grid [Hp, Wp].
"""

from __future__ import annotations

import numpy as np


def crop_bounds(boxes: np.ndarray, size: int, crop_padding: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop interval [lo, hi) on the prototype grid along one axis (0: x from columns 0/2, 1: y from 1/3).

    boxes float32 [..., 4] relative xyxy (coordinates in either order) -> (lo, hi) float32 [...],
    in prototype pixels: lo = max(min * size - padding, 0), hi = min(max * size + padding, size).
    Pixel i is inside iff lo <= i < hi.
    """
    boxes = np.asarray(boxes, np.float32)
    first, second = boxes[..., axis], boxes[..., axis + 2]
    size_f = np.float32(size)
    lo = np.minimum(first, second) * size_f
    hi = np.maximum(first, second) * size_f
    lo = np.maximum(lo - np.float32(crop_padding), np.float32(0))
    hi = np.minimum(hi + np.float32(crop_padding), size_f)
    return lo, hi


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function; large negative inputs give 0 without a warning."""
    with np.errstate(over='ignore'):
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def assemble_masks(proto: np.ndarray, coef: np.ndarray, det_indices: np.ndarray, det_boxes: np.ndarray,
                   num_dets: np.ndarray, *, crop_padding: int) -> np.ndarray:
    """The `yolact::MaskAssembly` op over a batch.

    proto float [B, Hp, Wp, M] (NHWC prototypes); coef float [B, P, M] (tanh'd coefficients of every
    prior); det_indices int [B, D] prior index of each detection; det_boxes float [B, D, 4] xyxy
    relative; num_dets int [B]. Returns float32 [B, D, Hp, Wp]: sigmoid(proto . coef[index]) inside
    the padded box, 0 outside it and 0 for every row d >= num_dets.
    """
    proto = np.asarray(proto, np.float32)
    coef = np.asarray(coef, np.float32)
    det_indices = np.asarray(det_indices)
    det_boxes = np.asarray(det_boxes, np.float32)
    num_dets = np.asarray(num_dets)
    if proto.ndim != 4 or coef.ndim != 3 or coef.shape[0] != proto.shape[0] or coef.shape[2] != proto.shape[3]:
        raise ValueError(f'assemble_masks takes proto [B, Hp, Wp, M] and coef [B, P, M] with the same B and M; '
                         f'got proto {proto.shape} and coef {coef.shape}')
    batch, height, width, _ = proto.shape
    max_dets = det_indices.shape[1]
    masks = np.zeros((batch, max_dets, height, width), np.float32)
    columns = np.arange(width, dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)
    for b in range(batch):
        n = int(num_dets[b])
        if n == 0:
            continue
        logits = np.einsum('hwm,dm->dhw', proto[b], coef[b, det_indices[b, :n]])
        x_lo, x_hi = crop_bounds(det_boxes[b, :n], width, crop_padding, axis=0)
        y_lo, y_hi = crop_bounds(det_boxes[b, :n], height, crop_padding, axis=1)
        keep_x = (columns[None, :] >= x_lo[:, None]) & (columns[None, :] < x_hi[:, None])
        keep_y = (rows[None, :] >= y_lo[:, None]) & (rows[None, :] < y_hi[:, None])
        inside = keep_y[:, :, None] & keep_x[:, None, :]
        masks[b, :n] = np.where(inside, sigmoid(logits), np.float32(0))
    return masks
