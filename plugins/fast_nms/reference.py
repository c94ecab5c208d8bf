"""Fast NMS, numpy reference: the readable definition of the `yolact::FastNMS` op.

Every other form of the op (the Triton kernels, the TensorRT plugin, the ONNX function body) is
tested index for index against this file. The semantics are YOLACT's `Detect` + `fast_nms`
(dbolya/yolact, layers/functions/detection.py) made deterministic: every sort is stable, so ties
in score go to the lower prior index (per-class and cross-class) or to the lower (class, position)
pair (the global sort). All arithmetic is float32; float16 inputs are upcast first.

Coordinate space: boxes are decoded xyxy, relative to the input image (0..1, not clipped).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FastNMSOutput(NamedTuple):
    """The op's outputs, padded to D = max_dets rows per image (rows past num_dets are zero).

    num_dets int32 [B]; boxes float32 [B, D, 4] xyxy relative; scores float32 [B, D];
    classes int32 [B, D] 0-based, background excluded; indices int32 [B, D] prior index.
    """

    num_dets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    indices: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [N, 4] with every box in `b` [M, 4] (xyxy) -> float32 [N, M].

    The original's jaccard (no +1), with 0 where the union is 0. The operation order is part of the
    definition: the kernels evaluate exactly these float32 operations, so the results agree to the bit.
    """
    a = np.asarray(a, np.float32)[:, None, :]
    b = np.asarray(b, np.float32)[None, :, :]
    width = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), np.float32(0))
    height = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), np.float32(0))
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = inter / union
    return np.where(union == 0, np.float32(0), iou).astype(np.float32)


def upper_triangular_iou_max(boxes: np.ndarray) -> np.ndarray:
    """For boxes [T, 4] in score order: float32 [T], entry j = max over i < j of IoU(i, j), 0 for j = 0."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    iou = np.triu(box_iou(boxes, boxes), k=1)
    return iou.max(axis=0)


def _stable_descending(values: np.ndarray) -> np.ndarray:
    """Positions that sort `values` descending, ties kept in their original (ascending) order."""
    return np.argsort(-values, kind='stable')


def fast_nms_image(boxes: np.ndarray, scores: np.ndarray, *, conf_thresh: float, iou_thresh: float,
                   top_k: int, max_dets: int, cross_class: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast NMS for one image.

    boxes float [P, 4] xyxy relative; scores float [P, K] class scores without background.
    Returns (indices int64 [N], classes int64 [N], scores float32 [N]) with N <= max_dets, sorted
    by score descending (stable).
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    conf_thresh, iou_thresh = np.float32(conf_thresh), np.float32(iou_thresh)
    candidates = np.flatnonzero(scores.max(axis=1, initial=-np.inf) > conf_thresh)
    num_kept_max = min(top_k, len(candidates))
    if cross_class:
        best = scores[candidates].max(axis=1, initial=-np.inf)
        order = candidates[_stable_descending(best)[:num_kept_max]]
        kept = upper_triangular_iou_max(boxes[order]) <= iou_thresh
        indices = order[kept]
        classes = scores[indices].argmax(axis=1)  # first maximum: the lowest class on ties
        return indices[:max_dets], classes[:max_dets], scores[indices, classes][:max_dets]
    kept_indices, kept_classes, kept_scores = [], [], []
    for k in range(scores.shape[1]):  # class-major, then position: the order the global sort keeps
        order = candidates[_stable_descending(scores[candidates, k])[:num_kept_max]]
        kept = upper_triangular_iou_max(boxes[order]) <= iou_thresh
        kept_indices.append(order[kept])
        kept_classes.append(np.full(int(kept.sum()), k, np.int64))
        kept_scores.append(scores[order[kept], k])
    indices = np.concatenate(kept_indices) if kept_indices else np.zeros(0, np.int64)
    classes = np.concatenate(kept_classes) if kept_classes else np.zeros(0, np.int64)
    kept_scores = np.concatenate(kept_scores) if kept_scores else np.zeros(0, np.float32)
    best = _stable_descending(kept_scores)[:max_dets]
    return indices[best], classes[best], kept_scores[best]


def fast_nms(boxes: np.ndarray, scores: np.ndarray, *, conf_thresh: float, iou_thresh: float,
             top_k: int, max_dets: int, cross_class: bool = False) -> FastNMSOutput:
    """Fast NMS over a batch, outputs padded to max_dets: the `yolact::FastNMS` op.

    boxes float32/float16 [B, P, 4] xyxy relative; scores float32/float16 [B, P, K] softmax
    scores without the background column. Thresholds are compared in float32: a prior is a
    candidate when its best score > conf_thresh; a box is kept when its upper-triangular IoU
    max <= iou_thresh. top_k caps candidates per class (per image in cross-class mode), max_dets
    the detections per image.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f'fast_nms takes boxes [B, P, 4] and scores [B, P, K] with the same B and P; '
                         f'got boxes {boxes.shape} and scores {scores.shape}')
    batch = boxes.shape[0]
    out = FastNMSOutput(
        num_dets=np.zeros(batch, np.int32), boxes=np.zeros((batch, max_dets, 4), np.float32),
        scores=np.zeros((batch, max_dets), np.float32), classes=np.zeros((batch, max_dets), np.int32),
        indices=np.zeros((batch, max_dets), np.int32))
    for b in range(batch):
        indices, classes, det_scores = fast_nms_image(
            boxes[b], scores[b], conf_thresh=conf_thresh, iou_thresh=iou_thresh, top_k=top_k,
            max_dets=max_dets, cross_class=cross_class)
        n = len(indices)
        out.num_dets[b] = n
        out.boxes[b, :n] = boxes[b, indices]
        out.scores[b, :n] = det_scores
        out.classes[b, :n] = classes
        out.indices[b, :n] = indices
    return out
