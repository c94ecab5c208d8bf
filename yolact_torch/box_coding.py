"""Box formats, SSD box coding and pairwise IoU, as the original's layers/box_utils.py.

Every box here is relative to the model input (0..1 on both axes). Two formats:
- xyxy: (x1, y1, x2, y2), corners;
- cxcywh: (cx, cy, w, h), centre and size (the priors' format).
Pure functions on float tensors; the leading dimensions broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def point_form(boxes: Tensor) -> Tensor:
    """cxcywh [..., 4] -> xyxy [..., 4], same dtype."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def center_size(boxes: Tensor) -> Tensor:
    """xyxy [..., 4] -> cxcywh [..., 4], same dtype."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return torch.cat(((high + low) / 2, high - low), dim=-1)


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Regression targets of the boxes matched to each prior (the inverse of `decode`).

    matched: float [..., P, 4] xyxy, the ground-truth box assigned to each prior.
    priors: float [P, 4] cxcywh. variances: (centre variance, size variance), cfg.variances.
    Returns loc float [..., P, 4]: ((cxcy - prior_cxcy) / (v0 * prior_wh), log(wh / prior_wh) / v1).
    """
    centre_offset = (matched[..., :2] + matched[..., 2:]) / 2 - priors[:, :2]
    centre_offset = centre_offset / (variances[0] * priors[:, 2:])
    size_ratio = (matched[..., 2:] - matched[..., :2]) / priors[:, 2:]
    return torch.cat((centre_offset, torch.log(size_ratio) / variances[1]), dim=-1)


def decode(loc: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Boxes from the head's regression output.

    loc: float [..., P, 4] as the prediction head gives it. priors: float [P, 4] cxcywh.
    variances: (centre variance, size variance), cfg.variances.
    Returns float [..., P, 4] xyxy relative. As the original, x2 = x1 + w (not cx + w / 2), which
    matters in the last bit.
    """
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    low = centre - size / 2
    return torch.cat((low, size + low), dim=-1)


def _intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection area of xyxy boxes a [..., N, 4] and b [..., M, 4] -> [..., N, M]."""
    high = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    low = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    extent = (high - low).clamp(min=0)
    return extent[..., 0] * extent[..., 1]


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is not positive (degenerate boxes)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes (the original's jaccard: no +1 on widths).

    a: float [..., N, 4], b: float [..., M, 4] -> float [..., N, M]; 0 where the union is 0.
    """
    inter = _intersection(a, b)
    union = _area(a)[..., :, None] + _area(b)[..., None, :] - inter
    return _safe_ratio(inter, union)


def box_ioa(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over the area of `a` (the original's jaccard with iscrowd=True, used
    with crowd boxes as `b`). a: float [..., N, 4], b: float [..., M, 4] xyxy -> float [..., N, M];
    0 where a's area is 0."""
    inter = _intersection(a, b)
    return _safe_ratio(inter, _area(a)[..., :, None].expand_as(inter))
