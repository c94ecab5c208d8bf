"""Edges the optimised FastNMS body has to get right on top of the random cases of
test_onnx_functions.py: IoU thresholds at and below 0 and at 1, IoUs exactly at the threshold, a
batch whose images have very different candidate counts (the body sizes T from the largest), and
value names that stay distinct when both function bodies are inlined into one graph."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.fast_nms import onnx_function as nms_function
from plugins.mask_assembly import onnx_function as mask_function
from tests.plugins.cases import NMSCase, random_boxes, random_scores
from tests.plugins.test_onnx_functions import assert_nms_equal, run_nms


@pytest.mark.parametrize('iou_thresh', [-0.1, 0.0, 1.0])
@pytest.mark.parametrize('cross_class', [False, True])
def test_fast_nms_function_iou_thresholds_at_the_edges(iou_thresh, cross_class):
    """Below 0 nothing is kept (the reference's iou_max is at least 0); at 0 only boxes overlapping no
    higher-scored one; at 1 everything; degenerate boxes (union 0) among them."""
    rng = np.random.default_rng(11)
    case = NMSCase(random_boxes(rng, (2, 40)), random_scores(rng, 2, 40, 4, 0.05, 8), 0.05, iou_thresh, 30, 60,
                   cross_class)
    got = run_nms(case)
    assert_nms_equal(got, case)
    if iou_thresh < 0:
        assert got['num_dets'].tolist() == [0, 0]


@pytest.mark.parametrize('iou_thresh', [np.nextafter(np.float32(0.5), np.float32(0)), 0.5])
def test_fast_nms_function_iou_exactly_at_the_threshold(iou_thresh):
    """IoU([0,0,1,1], [0,0,1,0.5]) is exactly 0.5: kept at threshold 0.5, suppressed just below it."""
    boxes = np.float32([[[0, 0, 1, 1], [0, 0, 1, 0.5]]])
    scores = np.float32([[[0.9], [0.8]]])
    case = NMSCase(boxes, scores, 0.05, float(iou_thresh), 10, 10, False)
    got = run_nms(case)
    assert_nms_equal(got, case)
    assert got['num_dets'][0] == (2 if iou_thresh == 0.5 else 1)


def test_fast_nms_function_batch_of_unequal_candidate_counts():
    """Images with no candidate, a few, and more than top_k, in one batch and alone."""
    rng = np.random.default_rng(5)
    scores = random_scores(rng, 3, 120, 5, 0.2, 8)
    scores[0] = np.minimum(scores[0], 0.1)  # no candidate
    scores[1, 3:] = np.minimum(scores[1, 3:], 0.1)  # at most 3 candidates
    scores[2] = np.maximum(scores[2], 0.3)  # every prior a candidate, above top_k
    case = NMSCase(random_boxes(rng, (3, 120)), scores, 0.2, 0.5, 50, 40, False)
    got = run_nms(case)
    assert got['num_dets'][0] == 0 and got['num_dets'][2] == 40
    assert_nms_equal(got, case)
    for b in range(3):
        alone = NMSCase(case.boxes[b:b + 1], case.scores[b:b + 1], 0.2, 0.5, 50, 40, False)
        assert_nms_equal(run_nms(alone), alone)


def test_function_value_names_are_distinct_between_the_two_bodies():
    """TensorRT's parser inlines both bodies into one graph and names nodes after their outputs."""
    def names(function):
        return {name for node in function.node for name in node.output}
    fast_nms_names, mask_names = names(nms_function.make_function()), names(mask_function.make_function())
    assert fast_nms_names and mask_names
    assert not fast_nms_names & mask_names
