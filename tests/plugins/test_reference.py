"""The numpy references on hand-made cases whose answer is known: the semantics in plugins/README.md."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.fast_nms.reference import box_iou, fast_nms, fast_nms_image
from plugins.mask_assembly.reference import assemble_masks, crop_bounds

DEFAULTS = dict(conf_thresh=0.05, iou_thresh=0.5, top_k=200, max_dets=100)


def nms(boxes, scores, **overrides):
    return fast_nms_image(np.array(boxes, np.float32), np.array(scores, np.float32), **{**DEFAULTS, **overrides})


def test_box_iou_matches_a_float64_loop_and_is_zero_for_empty_union():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 4)), rng.random((6, 4))
    a[:, 2:] += a[:, :2]
    b[:, 2:] += b[:, :2]
    expected = np.zeros((5, 6))
    for i in range(5):
        for j in range(6):
            w = max(min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]), 0)
            h = max(min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]), 0)
            union = np.prod(a[i, 2:] - a[i, :2]) + np.prod(b[j, 2:] - b[j, :2]) - w * h
            expected[i, j] = w * h / union
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-5)
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0


def test_overlap_suppresses_within_a_class_only_unless_cross_class():
    boxes = [[0, 0, 1, 1], [0, 0, 1, 0.9], [0.5, 0.5, 0.6, 0.6]]  # 0 and 1 overlap by 0.9
    scores = [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]]
    indices, classes, kept = nms(boxes, scores)
    # every candidate ranks in every class, even with a score of 0 there (the original does not
    # re-threshold); prior 1 loses to prior 0 in both classes
    assert list(zip(indices.tolist(), classes.tolist())) == [(0, 0), (2, 1), (2, 0), (0, 1)]
    np.testing.assert_array_equal(kept, np.float32([0.9, 0.7, 0, 0]))
    scores = [[0.9, 0.0], [0.0, 0.8], [0.0, 0.7]]  # the overlapping box wins another class now
    assert (1, 1) in zip(*(v.tolist() for v in nms(boxes, scores)[:2]))
    assert nms(boxes, scores, cross_class=True)[0].tolist() == [0, 2]


def test_fast_nms_lets_suppressed_boxes_suppress():
    """A suppresses B, B suppresses C, A and C do not overlap: Fast NMS drops C as well (plain NMS would keep it)."""
    boxes = [[0, 0, 0.4, 1], [0.1, 0, 0.5, 1], [0.2, 0, 0.6, 1]]
    assert box_iou(np.float32(boxes), np.float32(boxes))[0, 2] < 0.5
    assert nms(boxes, [[0.9], [0.8], [0.7]])[0].tolist() == [0]


def test_iou_equal_to_threshold_is_kept_and_score_equal_to_conf_is_not_a_candidate():
    boxes = [[0, 0, 0.5, 0.5], [0, 0, 0.25, 0.5]]  # IoU exactly 0.5
    assert box_iou(np.float32(boxes), np.float32(boxes))[0, 1] == np.float32(0.5)
    assert nms(boxes, [[0.9], [0.8]])[0].tolist() == [0, 1]
    assert nms(boxes, [[0.9], [0.05]])[0].tolist() == [0]
    assert nms(boxes, [[0.05], [0.05]])[0].tolist() == []


def test_ties_go_to_the_lower_prior_index_and_the_lower_class():
    boxes = [[0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0, 0, 0.1, 0.1]]
    indices, classes, _ = nms(boxes, [[0.3, 0.3]] * 3)
    # per class: 0 suppresses its duplicate 2; global order class-major, then position
    assert list(zip(indices.tolist(), classes.tolist())) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    indices, classes, _ = nms(boxes, [[0.3, 0.3]] * 3, cross_class=True)
    assert indices.tolist() == [0, 1] and classes.tolist() == [0, 0]


def test_top_k_is_taken_before_suppression_and_max_dets_caps_the_result():
    boxes = [[i / 10, 0, i / 10 + 0.05, 0.05] for i in range(6)]  # disjoint
    scores = [[0.9 - i / 10] for i in range(6)]
    assert nms(boxes, scores, top_k=4)[0].tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores, max_dets=2)[0].tolist() == [0, 1]
    # the candidate set is per prior (best class), so a low score of a candidate still ranks
    indices, classes, kept = nms(boxes[:2], [[0.9, 0.01], [0.02, 0.8]])
    assert list(zip(indices.tolist(), classes.tolist())) == [(0, 0), (1, 1), (1, 0), (0, 1)]
    np.testing.assert_array_equal(kept, np.float32([0.9, 0.8, 0.02, 0.01]))


def test_batched_outputs_are_padded_with_zero_rows():
    boxes = np.float32([[[0, 0, 0.5, 0.5], [0.6, 0.6, 1, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]]])
    scores = np.float32([[[0.9], [0.6]], [[0.01], [0.02]]])
    out = fast_nms(boxes, scores, **{**DEFAULTS, 'max_dets': 3})
    assert out.num_dets.tolist() == [2, 0]
    assert out.boxes.shape == (2, 3, 4) and out.indices.dtype == np.int32 and out.classes.dtype == np.int32
    np.testing.assert_array_equal(out.boxes[0, :2], boxes[0])
    assert not out.boxes[0, 2:].any() and not out.boxes[1].any() and not out.scores[1].any()
    with pytest.raises(ValueError, match=r'boxes \[B, P, 4\]'):
        fast_nms(boxes[0], scores[0], **DEFAULTS)


def test_crop_bounds_follow_the_original_padding_and_clamping():
    lo, hi = crop_bounds(np.float32([[0.5, 0.25, 0.25, 0.5], [-0.1, 0, 1.2, 1]]), 8, 1, axis=0)
    assert lo.tolist() == [1.0, 0.0] and hi.tolist() == [5.0, 8.0]  # x: min/max of 0.5, 0.25 -> 2..4, +-1


def test_assemble_masks_matches_a_float64_loop():
    rng = np.random.default_rng(1)
    proto = rng.random((2, 6, 7, 3)).astype(np.float32)
    coef = rng.normal(size=(2, 5, 3)).astype(np.float32)
    det_indices = np.int32([[4, 1, 0], [2, 2, 2]])
    det_boxes = np.float32([[[0.1, 0.2, 0.6, 0.5], [0.9, 0.9, 0.4, 0.3], [0, 0, 1, 1]], [[0.5, 0.5, 0.5, 0.5]] * 3])
    num_dets = np.int32([2, 1])
    masks = assemble_masks(proto, coef, det_indices, det_boxes, num_dets, crop_padding=1)
    expected = np.zeros((2, 3, 6, 7))
    for b in range(2):
        for d in range(num_dets[b]):
            x1, y1, x2, y2 = det_boxes[b, d].astype(np.float64)
            for y in range(6):
                for x in range(7):
                    inside = (max(min(x1, x2) * 7 - 1, 0) <= x < min(max(x1, x2) * 7 + 1, 7)
                              and max(min(y1, y2) * 6 - 1, 0) <= y < min(max(y1, y2) * 6 + 1, 6))
                    if inside:
                        expected[b, d, y, x] = 1 / (1 + np.exp(-proto[b, y, x] @ coef[b, det_indices[b, d]]))
    np.testing.assert_allclose(masks, expected, rtol=0, atol=1e-6)
    assert masks[1, 0].any() and not masks[0, 2].any()  # a point box still gets its padding
