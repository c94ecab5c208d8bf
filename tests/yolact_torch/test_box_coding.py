import math

import pytest
import torch

from yolact_torch.box_coding import box_ioa, box_iou, center_size, decode, encode, point_form
from yolact_torch.config import yolact_base

VARIANCES = yolact_base.variances


def random_xyxy(n, generator, degenerate=0):
    low = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.8
    size = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.01
    boxes = torch.cat((low, low + size), dim=1)
    boxes[:degenerate, 2:] = boxes[:degenerate, :2]  # zero-area boxes
    return boxes


def random_priors(n, generator):
    centre = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    size = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.02
    return torch.cat((centre, size), dim=1)


def test_point_form_and_center_size_known_values_and_inverse():
    cxcywh = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    xyxy = point_form(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(center_size(xyxy), cxcywh)


def test_decode_known_values():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    # centre moves by loc * variance * prior size; size scales by exp(loc * variance)
    loc = torch.tensor([[1.0, -1.0, math.log(2) / VARIANCES[1], 0.0]], dtype=torch.float64)
    cx, cy = 0.5 + 1.0 * VARIANCES[0] * 0.2, 0.5 - 1.0 * VARIANCES[0] * 0.4
    w, h = 0.2 * 2, 0.4
    expected = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=torch.float64)
    torch.testing.assert_close(decode(loc, prior, VARIANCES), expected)


def test_encode_known_values():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    matched = torch.tensor([[0.45, 0.3, 0.65, 0.5]], dtype=torch.float64)  # centre (0.55, 0.4), size (0.2, 0.2)
    expected = torch.tensor([[(0.55 - 0.5) / (VARIANCES[0] * 0.2), (0.4 - 0.5) / (VARIANCES[0] * 0.4),
                              math.log(0.2 / 0.2) / VARIANCES[1], math.log(0.2 / 0.4) / VARIANCES[1]]],
                            dtype=torch.float64)
    torch.testing.assert_close(encode(matched, prior, VARIANCES), expected)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    priors = random_priors(200, g)
    boxes = random_xyxy(200, g)
    torch.testing.assert_close(decode(encode(boxes, priors, VARIANCES), priors, VARIANCES), boxes)
    loc = torch.randn(200, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(encode(decode(loc, priors, VARIANCES), priors, VARIANCES), loc)


def test_decode_broadcasts_over_batch():
    g = torch.Generator().manual_seed(1)
    priors = random_priors(50, g).float()
    loc = torch.randn(3, 50, 4, generator=g)
    batched = decode(loc, priors, VARIANCES)
    assert batched.shape == (3, 50, 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], decode(loc[b], priors, VARIANCES))


def reference_overlaps(a, b, over_union):
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            inter = max(min(ax2, bx2) - max(ax1, bx1), 0.0) * max(min(ay2, by2) - max(ay1, by1), 0.0)
            area_a = (ax2 - ax1) * (ay2 - ay1)
            area_b = (bx2 - bx1) * (by2 - by1)
            denominator = area_a + area_b - inter if over_union else area_a
            out[i, j] = inter / denominator if denominator > 0 else 0.0
    return out


@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_box_iou_against_float64_loop(dtype, tolerance):
    g = torch.Generator().manual_seed(2)
    a = random_xyxy(17, g, degenerate=2)
    b = torch.cat((random_xyxy(23, g, degenerate=1), a[:3]))  # identical boxes and a shared degenerate one
    iou = box_iou(a.to(dtype), b.to(dtype))
    assert iou.dtype == dtype and iou.shape == (17, 26)
    torch.testing.assert_close(iou.double(), reference_overlaps(a, b, True), atol=tolerance, rtol=0)
    assert iou[2, 25] == 1.0  # a box with itself
    assert iou[0, 23] == 0.0  # two zero-area boxes: union 0 -> 0, not NaN
    assert not torch.isnan(iou).any()


def test_box_iou_batched():
    g = torch.Generator().manual_seed(3)
    a = torch.stack([random_xyxy(5, g) for _ in range(2)])
    b = torch.stack([random_xyxy(7, g) for _ in range(2)])
    iou = box_iou(a, b)
    assert iou.shape == (2, 5, 7)
    for k in range(2):
        torch.testing.assert_close(iou[k], reference_overlaps(a[k], b[k], True))


def test_box_ioa_against_float64_loop():
    g = torch.Generator().manual_seed(4)
    a = random_xyxy(11, g, degenerate=1)
    b = random_xyxy(6, g)
    torch.testing.assert_close(box_ioa(a, b), reference_overlaps(a, b, False))
    inner = torch.tensor([[0.2, 0.2, 0.3, 0.3]], dtype=torch.float64)
    outer = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert box_ioa(inner, outer).item() == 1.0  # a box inside a crowd region is fully covered
