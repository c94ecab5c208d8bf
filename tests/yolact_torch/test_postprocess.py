"""The torch reference post-processing: Fast NMS against a plain greedy NMS, the contract's caps,
ties and empty cases, mask crop and assembly against hand-made cases, detect's padded outputs, and
the torch pasting reference."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yolact_torch.config import yolact_tiny
from yolact_torch.postprocess import assemble_masks, box_region, crop_masks, detect, fast_nms, paste_masks
from yolact_torch.yolact import YolactOutput
from plugins.fast_nms.reference import fast_nms_image

IOU = yolact_tiny.nms_thresh


def random_boxes(generator, n, max_size=0.4):
    """float32 [n, 4] xyxy relative boxes, clustered so that many overlap."""
    low = torch.rand(n, 2, generator=generator) * 0.6
    size = torch.rand(n, 2, generator=generator) * max_size + 0.02
    return torch.cat([low, low + size], dim=1)


def iou64(a, b):
    """IoU of two xyxy boxes in float64, written out."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0.0) * max(min(ay2, by2) - max(ay1, by1), 0.0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(boxes, order, threshold):
    """Classic NMS over `order` (positions in score order): keep a box unless a box kept before it
    overlaps it by more than `threshold`. Returns the set of kept positions into `order`."""
    kept = []
    for j, index in enumerate(order):
        if all(iou64(boxes[order[i]], boxes[index]) <= threshold for i in kept):
            kept.append(j)
    return set(kept)


@pytest.mark.parametrize('seed', range(6))
def test_fast_nms_is_greedy_nms_minus_boxes_suppressed_only_by_suppressed_boxes(seed):
    generator = torch.Generator().manual_seed(seed)
    n = 120
    boxes = random_boxes(generator, n)
    scores = torch.rand(1, n, generator=generator)
    result = fast_nms(boxes, scores, torch.zeros(n, 2), iou_thresh=IOU, top_k=n, max_dets=n)

    order = torch.sort(scores[0], descending=True, stable=True).indices.tolist()
    position = {index: j for j, index in enumerate(order)}
    fast_kept = {position[i] for i in result.indices.tolist()}
    greedy_kept = greedy_nms(boxes, order, IOU)

    assert fast_kept <= greedy_kept
    for j in range(n):
        overlapping_above = [i for i in range(j) if iou64(boxes[order[i]], boxes[order[j]]) > IOU]
        # Fast NMS keeps exactly the boxes no higher-scoring box overlaps (suppressed or not) ...
        assert (j in fast_kept) == (not overlapping_above)
        # ... so it differs from greedy NMS exactly where every overlapping higher box was suppressed.
        only_by_suppressed = bool(overlapping_above) and all(i not in greedy_kept for i in overlapping_above)
        assert (j in greedy_kept - fast_kept) == only_by_suppressed
    assert len(greedy_kept - fast_kept) > 0, 'the random case should exercise the documented difference'
    # Output order: score descending.
    assert torch.all(result.scores[:-1] >= result.scores[1:])


def test_fast_nms_matches_the_numpy_reference_index_for_index():
    generator = torch.Generator().manual_seed(7)
    for trial in range(20):
        n, k = 150, 4
        boxes = random_boxes(generator, n)
        scores = torch.softmax(torch.randn(n, k + 1, generator=generator) * 3, dim=1)[:, 1:]
        if trial % 2:
            scores = (scores * 8).round() / 8  # many exact ties
        cross_class = trial % 4 >= 2
        expected = fast_nms_image(boxes.numpy(), scores.numpy(), conf_thresh=yolact_tiny.conf_thresh,
                                  iou_thresh=IOU, top_k=40, max_dets=30, cross_class=cross_class)
        candidates = torch.nonzero(scores.max(dim=1).values > yolact_tiny.conf_thresh).flatten()
        got = fast_nms(boxes[candidates], scores[candidates].T, torch.zeros(len(candidates), 1), iou_thresh=IOU,
                       top_k=40, max_dets=30, cross_class=cross_class)
        np.testing.assert_array_equal(candidates[got.indices].numpy(), expected[0])
        np.testing.assert_array_equal(got.classes.numpy(), expected[1])
        np.testing.assert_array_equal(got.scores.numpy(), expected[2])


def test_per_class_keeps_overlapping_boxes_of_different_classes_cross_class_does_not():
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
    # scores [K=2, N=3]: box 0 is class 0, box 1 class 1 (overlapping box 0), box 2 class 1.
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.8, 0.7]])
    coef = torch.arange(6.0).view(3, 2)
    per_class = fast_nms(boxes, scores, coef, iou_thresh=IOU, top_k=200, max_dets=100)
    # Every (class, box) pair survives within its class except box 0 under class 1 (box 1 beats it)
    # and box 1 under class 0 (box 0 beats it); box 2 does not overlap.
    pairs = list(zip(per_class.classes.tolist(), per_class.indices.tolist()))
    assert pairs == [(0, 0), (1, 1), (1, 2), (0, 2)]
    torch.testing.assert_close(per_class.scores, torch.tensor([0.9, 0.8, 0.7, 0.0]))
    torch.testing.assert_close(per_class.coef, coef[[0, 1, 2, 2]])
    torch.testing.assert_close(per_class.boxes, boxes[[0, 1, 2, 2]])

    cross = fast_nms(boxes, scores, coef, iou_thresh=IOU, top_k=200, max_dets=100, cross_class=True)
    assert cross.indices.tolist() == [0, 2]
    assert cross.classes.tolist() == [0, 1]
    torch.testing.assert_close(cross.scores, torch.tensor([0.9, 0.7]))


def test_cross_class_takes_the_lowest_class_on_score_ties():
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
    scores = torch.tensor([[0.2], [0.4], [0.4]])
    result = fast_nms(boxes, scores, torch.zeros(1, 1), iou_thresh=IOU, top_k=200, max_dets=100, cross_class=True)
    assert result.classes.tolist() == [1]


@pytest.mark.parametrize('cross_class', [False, True])
def test_top_k_limits_the_boxes_considered_and_max_dets_the_boxes_returned(cross_class):
    n = 12
    # Disjoint boxes (nothing suppresses anything): the caps alone decide.
    x = torch.arange(n, dtype=torch.float32) / n
    boxes = torch.stack([x, torch.zeros(n), x + 0.5 / n, torch.full((n,), 0.5)], dim=1)
    scores = torch.stack([torch.linspace(0.9, 0.1, n), torch.linspace(0.1, 0.85, n)])  # [K=2, N]
    coef = torch.zeros(n, 1)

    capped = fast_nms(boxes, scores, coef, iou_thresh=IOU, top_k=3, max_dets=100, cross_class=cross_class)
    if cross_class:  # one list over best scores: the top 3 of max(class 0, class 1)
        best = scores.max(dim=0).values
        assert capped.indices.tolist() == torch.sort(best, descending=True, stable=True).indices[:3].tolist()
    else:  # top 3 of each class, merged by score
        assert sorted(capped.indices[capped.classes == 0].tolist()) == [0, 1, 2]
        assert sorted(capped.indices[capped.classes == 1].tolist()) == [9, 10, 11]
        assert len(capped.indices) == 6

    everything = fast_nms(boxes, scores, coef, iou_thresh=IOU, top_k=200, max_dets=100, cross_class=cross_class)
    assert len(everything.indices) == (n if cross_class else 2 * n)  # fewer candidates than top_k
    few = fast_nms(boxes, scores, coef, iou_thresh=IOU, top_k=200, max_dets=5, cross_class=cross_class)
    assert few.indices.tolist() == everything.indices[:5].tolist()
    assert few.scores.tolist() == everything.scores[:5].tolist()


def test_ties_go_to_the_lower_index_and_identical_boxes_keep_the_first():
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.4]] * 3 + [[0.6, 0.6, 0.8, 0.8]])
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    result = fast_nms(boxes, scores, torch.zeros(4, 1), iou_thresh=IOU, top_k=200, max_dets=100)
    assert result.indices.tolist() == [0, 3]
    # Equal scores across classes: class-major order survives the final stable sort.
    scores = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    result = fast_nms(boxes, scores, torch.zeros(4, 1), iou_thresh=IOU, top_k=1, max_dets=100)
    assert list(zip(result.classes.tolist(), result.indices.tolist())) == [(0, 0), (1, 3)]


def test_no_candidates_give_empty_results():
    result = fast_nms(torch.zeros(0, 4), torch.zeros(3, 0), torch.zeros(0, 2), iou_thresh=IOU, top_k=200,
                      max_dets=100)
    assert all(len(t) == 0 for t in result)
    result = fast_nms(torch.zeros(0, 4), torch.zeros(3, 0), torch.zeros(0, 2), iou_thresh=IOU, top_k=200,
                      max_dets=100, cross_class=True)
    assert all(len(t) == 0 for t in result)


def test_crop_with_padding_on_a_hand_made_case():
    masks = torch.ones(2, 8, 10)
    # Box 0: x 0.25..0.55 of 10 columns = 2.5..5.5, padded by 1 -> columns 2..6 (1.5 <= x < 6.5);
    #        y 0.25..0.75 of 8 rows = 2..6, padded -> rows 1..6 (1 <= y < 7).
    # Box 1: given with swapped corners and reaching past the edges -> clamped to the grid.
    boxes = torch.tensor([[0.25, 0.25, 0.55, 0.75], [1.2, 0.5, 0.85, -0.3]])
    expected = torch.zeros(2, 8, 10)
    expected[0, 1:7, 2:7] = 1
    # Box 1: x 8.5..12 padded -> 7.5..10 -> columns 8, 9; y -2.4..4 padded -> 0..5 -> rows 0..4.
    expected[1, 0:5, 8:10] = 1
    torch.testing.assert_close(crop_masks(masks, boxes, padding=1), expected)
    # No padding: the plain box.
    no_padding = torch.zeros(8, 10)
    no_padding[2:6, 3:6] = 1
    torch.testing.assert_close(crop_masks(masks[:1], boxes[:1], padding=0)[0], no_padding)


def test_assemble_masks_is_the_sigmoid_of_the_linear_combination_inside_the_box():
    generator = torch.Generator().manual_seed(0)
    proto = torch.rand(6, 7, 3, generator=generator)
    coef = torch.randn(2, 3, generator=generator)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.3, 0.4, 0.6, 0.7]])
    masks = assemble_masks(proto, coef, boxes, padding=1)
    assert masks.shape == (2, 6, 7)
    for d in range(2):
        for y in range(6):
            for x in range(7):
                value = torch.sigmoid(torch.dot(proto[y, x], coef[d]))
                inside = bool(box_region(boxes[d:d + 1], 6, 7, padding=1)[0, y, x])
                assert masks[d, y, x].item() == pytest.approx(value.item() if inside else 0.0, abs=1e-6)
    assert bool((masks[0] > 0).all())  # the full-image box keeps everything


def synthetic_output(generator, batch, cfg, num_priors=300, proto_size=20):
    return YolactOutput(
        loc=torch.randn(batch, num_priors, 4, generator=generator) * 0.5,
        conf=torch.randn(batch, num_priors, cfg.num_classes, generator=generator) * 2,
        coef=torch.tanh(torch.randn(batch, num_priors, cfg.mask_dim, generator=generator)),
        proto=torch.relu(torch.randn(batch, proto_size, proto_size, cfg.mask_dim, generator=generator)),
        segm=None)


@pytest.mark.parametrize('cross_class', [False, True])
def test_detect_pads_to_max_dets_and_treats_images_independently(cross_class):
    generator = torch.Generator().manual_seed(3)
    cfg = yolact_tiny
    out = synthetic_output(generator, 3, cfg)
    priors = torch.cat([torch.rand(300, 2, generator=generator), torch.rand(300, 2, generator=generator) * 0.3
                        + 0.05], dim=1)
    # Image 2 has no candidate at all: background wins everywhere.
    out.conf[2, :, 0] = 50.0
    result = detect(out, priors, cfg, cross_class=cross_class, max_dets=40)
    assert result.num_dets.dtype == torch.int32 and result.classes.dtype == torch.int32
    assert result.boxes.shape == (3, 40, 4) and result.masks.shape == (3, 40, 20, 20)
    assert result.num_dets[2] == 0
    for b in range(3):
        n = int(result.num_dets[b])
        for field in (result.boxes, result.scores, result.classes, result.masks):
            assert not field[b, n:].any(), 'rows past num_dets must be zero'
    assert result.num_dets[0] == 40  # random logits: plenty of candidates, capped
    single = detect(YolactOutput(*(t[1:2] if t is not None else None for t in out)), priors, cfg,
                    cross_class=cross_class, max_dets=40)
    assert result.box_scores is None and single.box_scores is None  # YOLACT: no re-scoring, one score
    for a, b in zip(single[:-1], result[:-1]):
        torch.testing.assert_close(a[0], b[1])


def test_detect_uses_the_config_thresholds():
    generator = torch.Generator().manual_seed(4)
    out = synthetic_output(generator, 1, yolact_tiny)
    priors = torch.cat([torch.rand(300, 2, generator=generator), torch.full((300, 2), 0.1)], dim=1)
    strict = dataclasses.replace(yolact_tiny, conf_thresh=0.6, max_num_detections=100)
    result = detect(out, priors, strict)
    scores = torch.softmax(out.conf[0], dim=-1)[:, 1:]
    num_candidates = int((scores.max(dim=1).values > 0.6).sum())
    assert 0 < int(result.num_dets[0]) <= num_candidates * (yolact_tiny.num_classes - 1)
    assert result.boxes.shape[1] == strict.max_num_detections


def test_paste_masks_reference_resizes_bilinearly_and_clears_outside_the_box():
    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(3, 12, 12, generator=generator)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.8]])
    pasted = paste_masks(masks, boxes, (30, 40), threshold=0.5)
    assert pasted.dtype == torch.bool and pasted.shape == (3, 30, 40)
    resized = F.interpolate(masks[None], size=(30, 40), mode='bilinear', align_corners=False)[0] > 0.5
    torch.testing.assert_close(pasted[1], resized[1])  # the full-image box clears nothing
    inside = torch.zeros(30, 40, dtype=torch.bool)
    inside[6:27, 4:24] = True  # y 0.2*30=6 .. 0.9*30=27, x 0.1*40=4 .. 0.6*40=24
    torch.testing.assert_close(pasted[0], resized[0] & inside)
    assert not pasted[2].any()  # zero-width box
    assert paste_masks(masks[:0], boxes[:0], (30, 40)).shape == (0, 30, 40)
