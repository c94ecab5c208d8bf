"""Detections: selection keeps the fields together; to_coco_json round-trips through pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from runtime.detections import BBOX_SCORE_KEY, Detections


def make_detections(rng, n=5, image_size=(30, 40), box_scores=False):
    height, width = image_size
    boxes, masks = [], np.zeros((n, height, width), bool)
    for i in range(n):
        x1, y1 = rng.integers(0, width - 10), rng.integers(0, height - 10)
        x2, y2 = x1 + rng.integers(2, 10), y1 + rng.integers(2, 10)
        boxes.append([x1 + 0.25, y1 + 0.5, x2 + 0.75, y2])
        masks[i, y1:y2, x1:x2] = rng.random((y2 - y1, x2 - x1)) > 0.3
    scores = np.sort(rng.random(n).astype(np.float32))[::-1].copy()
    classes = rng.integers(0, 3, n)
    return Detections(np.array(boxes, np.float32), scores, classes, masks, image_size,
                      box_scores=rng.random(n).astype(np.float32) if box_scores else None)


def test_coco_json_round_trip():
    dets = make_detections(np.random.default_rng(0))
    names, category_ids = ('circle', 'triangle', 'star'), (7, 3, 12)
    entries = dets.to_coco_json(42, 'images/x.png', names, category_ids)
    assert len(entries) == len(dets)
    for i, entry in enumerate(entries):
        assert entry['image_id'] == 42 and entry['file_name'] == 'images/x.png'
        k = int(dets.classes[i])
        assert (entry['class_index'], entry['category_id'], entry['category_name']) == (k, category_ids[k], names[k])
        x1, y1, x2, y2 = dets.boxes[i]
        np.testing.assert_allclose(entry['bbox'], [x1, y1, x2 - x1, y2 - y1], atol=0.006)
        assert entry['score'] == pytest.approx(float(dets.scores[i]))
        assert isinstance(entry['segmentation']['counts'], str)
        rle = {'size': entry['segmentation']['size'], 'counts': entry['segmentation']['counts'].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), dets.masks[i])


def test_selection_keeps_fields_aligned():
    dets = make_detections(np.random.default_rng(1), n=6)
    strong = dets[dets.scores > np.median(dets.scores)]
    assert len(strong) == 3
    np.testing.assert_array_equal(strong.masks, dets.masks[:3])
    np.testing.assert_array_equal(strong.classes, dets.classes[:3])
    one = dets[4]
    assert len(one) == 1 and one.boxes.shape == (1, 4)
    np.testing.assert_array_equal(dets[1:3].boxes, dets.boxes[1:3])


def test_empty_detections():
    dets = make_detections(np.random.default_rng(2))
    empty = dets[dets.scores > 2]
    assert len(empty) == 0 and empty.masks.shape == (0, 30, 40) and empty.boxes.shape == (0, 4)
    assert empty.to_coco_json(1, 'a.jpg', ('a',), (1,)) == []


def test_mismatched_fields_are_refused():
    with pytest.raises(ValueError, match='fields disagree'):
        Detections(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64),
                   np.zeros((2, 5, 5), bool), (5, 6))


def test_a_yolact_plus_models_entries_score_boxes_with_box_scores():
    """With box_scores (YOLACT++), each entry's bbox_score is its box score and its score the
    re-scored one; without, the entries have no bbox_score; selection keeps box_scores aligned."""
    rng = np.random.default_rng(3)
    dets = make_detections(rng, box_scores=True)
    assert dets.box_scores.shape == (5,)
    entries = dets.to_coco_json(1, 'a.jpg', ('a', 'b', 'c'), (1, 2, 3))
    assert [e[BBOX_SCORE_KEY] for e in entries] == pytest.approx(dets.box_scores.tolist())
    assert [e['score'] for e in entries] == pytest.approx(dets.scores.tolist())
    plain = make_detections(np.random.default_rng(3))
    plain_entries = plain.to_coco_json(1, 'a.jpg', ('a', 'b', 'c'), (1, 2, 3))
    assert all(BBOX_SCORE_KEY not in e for e in plain_entries)
    assert [{k: v for k, v in e.items() if k != BBOX_SCORE_KEY} for e in entries] == plain_entries
    np.testing.assert_array_equal(dets[[3, 1]].box_scores, dets.box_scores[[3, 1]])
    np.testing.assert_array_equal(dets[2].box_scores, dets.box_scores[2:3])
    assert plain[1:3].box_scores is None


def test_box_scores_of_another_length_are_refused():
    dets = make_detections(np.random.default_rng(4), box_scores=True)
    with pytest.raises(ValueError, match=r'box_scores is \(4,\), not \[5\]'):
        Detections(dets.boxes, dets.scores, dets.classes, dets.masks, dets.image_size, box_scores=dets.box_scores[:4])
