"""How the GPU tests compare two RawDetections (num_dets, boxes, scores, classes, masks; rows past
num_dets are padding) and what they print when a comparison fails."""

from __future__ import annotations

import numpy as np


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of bool masks: a [N, H, W], b [M, H, W] -> float64 [N, M] (1 where both are empty)."""
    pixels = int(np.prod(a.shape[1:]))  # explicit: reshape(0, -1) is ambiguous for no masks
    a = a.reshape(len(a), pixels).astype(np.float64)
    b = b.reshape(len(b), pixels).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def drill_down(onnx_file, label: str) -> str:
    """The polygraphy command that finds the first layer where TensorRT departs from onnxruntime."""
    return (f'{label}. To find the layer: polygraphy run {onnx_file} --trt --onnxrt --trt-outputs mark all '
            f'--onnx-outputs mark all --fail-fast --atol 1e-4 --rtol 1e-3 --input-shapes images:[1,H,W,3] '
            f'(polygraphy debug reduce narrows a failing graph further)')


def assert_equal_detections(got: dict, ref: dict, mask_threshold: float, hint: str) -> None:
    """FP32: the criterion of the onnxruntime parity test (tests/export): the same number of
    detections, the same classes in the same order, boxes within rtol 1e-3, scores within rtol
    1e-4, masks (> mask_threshold) with IoU >= 0.99 each, padding zero."""
    np.testing.assert_array_equal(got['num_dets'], ref['num_dets'], err_msg=hint)
    for b, n in enumerate(ref['num_dets'].tolist()):
        where = f'{hint} (image {b})'
        np.testing.assert_array_equal(got['classes'][b, :n], ref['classes'][b, :n], err_msg=where)
        np.testing.assert_allclose(got['boxes'][b, :n], ref['boxes'][b, :n], rtol=1e-3, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(got['scores'][b, :n], ref['scores'][b, :n], rtol=1e-4, atol=1e-6, err_msg=where)
        ious = np.diag(mask_iou_matrix(got['masks'][b, :n] > mask_threshold, ref['masks'][b, :n] > mask_threshold))
        assert (ious >= 0.99).all(), f'{where}: mask IoU {ious.min():.4f} at detection {int(ious.argmin())}'
        for name in ('boxes', 'scores', 'classes', 'masks'):
            assert not got[name][b, n:].any(), f'{where}: {name} padding rows are not zero'


def match_confident(got: dict, ref: dict, b: int, mask_threshold: float, min_score: float,
                    margin: float) -> tuple[list[str], list[float]]:
    """Match image b's detections scoring above min_score one to one, by class and mask IoU
    (greedy, best IoU first). Detections within `margin` of min_score may lack a partner (reduced
    precision moves scores a little across the threshold). Returns (problem messages, mask IoUs of
    the matched confident pairs)."""
    def rows(raw):
        n = int(raw['num_dets'][b])
        return raw['classes'][b, :n], raw['scores'][b, :n], raw['masks'][b, :n] > mask_threshold

    got_cls, got_scores, got_masks = rows(got)
    ref_cls, ref_scores, ref_masks = rows(ref)
    ref_idx = np.flatnonzero(ref_scores > min_score - margin)
    got_idx = np.flatnonzero(got_scores > min_score - margin)
    ious = mask_iou_matrix(ref_masks[ref_idx], got_masks[got_idx])
    ious[ref_cls[ref_idx][:, None] != got_cls[got_idx][None, :]] = -1
    pairs = []
    while ious.size and ious.max() >= 0:
        r, g = np.unravel_index(np.argmax(ious), ious.shape)
        pairs.append((ref_idx[r], got_idx[g], ious[r, g]))
        ious[r, :] = -1
        ious[:, g] = -1
    matched_ref = {p[0] for p in pairs}
    matched_got = {p[1] for p in pairs}
    problems = [f'reference detection {r} (class {ref_cls[r]}, score {ref_scores[r]:.3f}) has no partner'
                for r in ref_idx if r not in matched_ref and ref_scores[r] > min_score + margin]
    problems += [f'detection {g} (class {got_cls[g]}, score {got_scores[g]:.3f}) is not in the reference'
                 for g in got_idx if g not in matched_got and got_scores[g] > min_score + margin]
    return problems, [iou for r, g, iou in pairs if max(ref_scores[r], got_scores[g]) > min_score + margin]


def assert_same_confident_detections(got: dict, ref: dict, mask_threshold: float, hint: str, *,
                                     min_score: float = 0.3, min_mask_iou: float = 0.95,
                                     margin: float = 0.02) -> int:
    """FP16: the same detections above min_score (class for class), each mask with IoU >=
    min_mask_iou to its partner. Returns how many confident pairs were compared."""
    compared = 0
    for b in range(len(ref['num_dets'])):
        problems, ious = match_confident(got, ref, b, mask_threshold, min_score, margin)
        low = [f'mask IoU {iou:.3f} < {min_mask_iou}' for iou in ious if iou < min_mask_iou]
        assert not problems and not low, f'{hint} (image {b}): ' + '; '.join(problems + low)
        compared += len(ious)
    return compared
