"""The comparisons of the GPU parity tests (tests/gpu/compare.py), checked on the CPU: they must pass
what reduced precision legitimately changes, and catch what it must not."""

import numpy as np
import pytest

from tests.gpu.compare import assert_equal_detections, assert_same_confident_detections, mask_iou_matrix

D, HP = 6, 16


def raw_detections(rng, counts):
    """RawDetections with well separated square masks, scores descending."""
    b = len(counts)
    raw = {'num_dets': np.array(counts, np.int32), 'boxes': np.zeros((b, D, 4), np.float32),
           'scores': np.zeros((b, D), np.float32), 'classes': np.zeros((b, D), np.int32),
           'masks': np.zeros((b, D, HP, HP), np.float32)}
    for i, n in enumerate(counts):
        for d in range(n):
            y, x = divmod(d, 3)
            raw['masks'][i, d, y * 8:y * 8 + 6, x * 5:x * 5 + 4] = 0.9
            raw['boxes'][i, d] = [x * 5 / HP, y * 8 / HP, (x * 5 + 4) / HP, (y * 8 + 6) / HP]
            raw['scores'][i, d] = 0.9 - 0.1 * d
            raw['classes'][i, d] = int(rng.integers(0, 5))
    return raw


def copy(raw):
    return {k: v.copy() for k, v in raw.items()}


@pytest.fixture
def ref():
    return raw_detections(np.random.default_rng(0), [4, 0, 6])


def test_iou_matrix():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    a[1, :, :1] = True
    iou = mask_iou_matrix(a, a[::-1])
    np.testing.assert_allclose(iou, [[2 / 10, 1], [1, 2 / 10]])
    assert mask_iou_matrix(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))[0, 0] == 1


def test_fp32_criterion(ref):
    assert_equal_detections(copy(ref), ref, 0.5, 'same')
    got = copy(ref)
    got['scores'][0, 1] *= 1 + 1e-6
    assert_equal_detections(got, ref, 0.5, 'within rtol')
    for change in ('classes', 'num_dets', 'mask', 'padding'):
        got = copy(ref)
        if change == 'classes':
            got['classes'][2, 3] += 1
        elif change == 'num_dets':
            got['num_dets'][0] -= 1
        elif change == 'mask':
            got['masks'][2, 0, :, :] = 0.9
        else:
            got['scores'][0, 5] = 0.1
        with pytest.raises(AssertionError):
            assert_equal_detections(got, ref, 0.5, change)


def test_fp16_criterion_tolerates_order_and_threshold_crossings(ref):
    got = copy(ref)
    # FP16 swaps two close detections and moves a borderline score across 0.3.
    for name in ('boxes', 'scores', 'classes', 'masks'):
        got[name][2, [0, 1]] = got[name][2, [1, 0]]
    got['scores'][2, 5] = 0.31  # reference 0.4 -> near threshold but well above: must still match
    got['scores'][2, 4] = 0.29  # reference 0.5: a confident detection lost -> only fine if matched at 0.29
    assert assert_same_confident_detections(got, ref, 0.5, 'fp16', margin=0.02) > 0
    ref_borderline = copy(ref)
    ref_borderline['scores'][0, 3] = 0.305  # within the margin: may lack a partner in `got`
    got = copy(ref_borderline)
    got['num_dets'][0] = 3
    got['scores'][0, 3] = 0
    got['masks'][0, 3] = 0
    assert_same_confident_detections(got, ref_borderline, 0.5, 'borderline', margin=0.02)


@pytest.mark.parametrize('change', ['lost', 'extra', 'class', 'mask'])
def test_fp16_criterion_catches_real_differences(ref, change):
    got = copy(ref)
    if change == 'lost':
        got['num_dets'][2] = 2  # detections 2..5 (scores 0.7..0.4) vanish
    elif change == 'extra':
        ref = copy(ref)
        ref['num_dets'][2] = 4  # the engine finds two confident detections the reference lacks
    elif change == 'class':
        got['classes'][0, 0] = (got['classes'][0, 0] + 1) % 5
    else:
        got['masks'][0, 0, :, :] = 0
        got['masks'][0, 0, 0:6, 0:3] = 0.9  # IoU 3/4
    with pytest.raises(AssertionError):
        assert_same_confident_detections(got, ref, 0.5, change)
