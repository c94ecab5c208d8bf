"""Random inputs for the post-processing ops, shared by every form's tests (reference, ONNX, Triton).

Built to hit the cases that break NMS implementations: boxes of every size (including zero-area,
inverted and duplicated ones), many exact score ties, images with no candidates, fewer candidates
than top_k and more than top_k, scores exactly at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass
class NMSCase:
    """boxes float32 [B, P, 4] xyxy relative; scores float32 [B, P, K]; the op's attributes."""

    boxes: np.ndarray
    scores: np.ndarray
    conf_thresh: float
    iou_thresh: float
    top_k: int
    max_dets: int
    cross_class: bool

    def attributes(self) -> dict:
        return dict(conf_thresh=self.conf_thresh, iou_thresh=self.iou_thresh, top_k=self.top_k,
                    max_dets=self.max_dets, cross_class=self.cross_class)


@dataclass
class MaskCase:
    """proto float32 [B, Hp, Wp, M]; coef [B, P, M]; det_indices int32 [B, D]; det_boxes [B, D, 4];
    num_dets int32 [B]; crop_padding."""

    proto: np.ndarray
    coef: np.ndarray
    det_indices: np.ndarray
    det_boxes: np.ndarray
    num_dets: np.ndarray
    crop_padding: int

    def inputs(self) -> tuple:
        return self.proto, self.coef, self.det_indices, self.det_boxes, self.num_dets


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 [*shape, 4] xyxy relative: clustered boxes with log-uniform sizes from 1e-4 to 1.5,
    some exact duplicates, some zero-area, some inverted (x2 < x1), some outside 0..1, some snapped
    to a 1/4 grid, and some the left half of another box on a 1/8 grid: an IoU of exactly 0.5, the
    default threshold."""
    n = int(np.prod(shape))
    centres = rng.random((max(1, n // 6), 2))[rng.integers(0, max(1, n // 6), n)] + rng.normal(0, 0.03, (n, 2))
    size = np.exp(rng.uniform(np.log(1e-4), np.log(1.5), (n, 2)))
    boxes = np.concatenate([centres - size / 2, centres + size / 2], axis=1)
    on_grid = rng.random(n) < rng.random()
    boxes[on_grid] = np.round(boxes[on_grid] * 4) / 4
    kind = rng.random(n)
    duplicate_of = rng.integers(0, n, n)
    boxes[kind < 0.15] = boxes[duplicate_of[kind < 0.15]]
    boxes[(kind >= 0.15) & (kind < 0.2), 2] = boxes[(kind >= 0.15) & (kind < 0.2), 0]  # zero width
    inverted = (kind >= 0.2) & (kind < 0.23)
    boxes[inverted] = boxes[inverted][:, [2, 3, 0, 1]]
    halves = np.flatnonzero((kind >= 0.23) & (kind < 0.38))
    whole = duplicate_of[halves]
    whole = whole[~np.isin(whole, halves)]
    corner = np.round(boxes[whole, :2] * 8) / 8
    boxes[whole] = np.concatenate([corner, corner + rng.integers(1, 6, (len(whole), 2)) / 8], axis=1)
    halves = halves[:len(whole)]
    boxes[halves] = boxes[whole]
    boxes[halves, 2] = (boxes[whole, 0] + boxes[whole, 2]) / 2
    return boxes.astype(np.float32).reshape(*shape, 4)


def random_scores(rng: np.random.Generator, batch: int, priors: int, classes: int, conf_thresh: float,
                  tie_levels: int) -> np.ndarray:
    """float32 [B, P, K] in 0..1. Per image a random share of candidates (image 0 of a batch > 1
    has none); scores quantised to `tie_levels` values when > 0 (many exact ties); some scores are
    exactly conf_thresh (not candidates: the comparison is strict), some 0.0 and some -0.0."""
    scores = rng.random((batch, priors, classes)) ** 3
    share = rng.random((batch, 1, 1))
    if batch > 1:
        share[0] = 0.0
    candidate = rng.random((batch, priors, 1)) < share
    scores = np.where(candidate, scores, scores * conf_thresh)
    if tie_levels:
        scores = np.ceil(scores * tie_levels) / tie_levels
    scores = scores.astype(np.float32)
    at_threshold = rng.random(scores.shape) < 0.05
    scores[at_threshold] = np.float32(conf_thresh)
    zero = rng.random(scores.shape)
    scores[zero < 0.1] = np.float32(0.0)
    scores[zero < 0.05] = np.float32(-0.0)  # equal to 0.0, a different bit pattern
    return scores


@st.composite
def nms_cases(draw, max_priors: int = 48, max_classes: int = 5, max_batch: int = 3, max_top_k: int | None = None,
              max_max_dets: int | None = None) -> NMSCase:
    """Hypothesis strategy: small NMS problems (the Triton interpreter is slow) that still reach
    every branch: top_k below, at and above the candidate count, max_dets below and above the kept count."""
    seed = draw(st.integers(0, 2**32 - 1))
    batch = draw(st.integers(1, max_batch))
    priors = draw(st.integers(1, max_priors))
    classes = draw(st.integers(1, max_classes))
    rng = np.random.default_rng(seed)
    conf_thresh = draw(st.sampled_from([0.05, 0.2, 0.5]))
    return NMSCase(
        boxes=random_boxes(rng, (batch, priors)),
        scores=random_scores(rng, batch, priors, classes, conf_thresh, draw(st.sampled_from([0, 4, 16]))),
        conf_thresh=conf_thresh, iou_thresh=draw(st.sampled_from([0.3, 0.5, 0.7])),
        top_k=draw(st.integers(1, max_top_k or max_priors + 4)),
        max_dets=draw(st.integers(1, max_max_dets or 3 * max_priors)),
        cross_class=draw(st.booleans()))


def negative_zero_case(cross_class: bool = False) -> NMSCase:
    """-0.0 and 0.0 are equal scores: priors 0 (-0.0) and 1 (0.0) tie in class 0 and keep index order."""
    boxes = np.float32([[[0, 0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6]]])
    scores = np.float32([[[-0.0, 0.9], [0.0, 0.9], [0.0, 0.01]]])
    return NMSCase(boxes, scores, 0.05, 0.5, 4, 8, cross_class)


def mask_case(rng: np.random.Generator, batch: int, priors: int, grid: tuple[int, int], mask_dim: int,
              max_dets: int, crop_padding: int) -> MaskCase:
    """Prototypes ~ relu(normal), coefficients tanh(normal) as the network makes them; detections with
    random prior indices and boxes of every size, inverted and reaching outside 0..1; num_dets from 0
    to max_dets (image 0 has none when batch > 1)."""
    proto = np.maximum(rng.normal(0, 1.5, (batch, *grid, mask_dim)), 0).astype(np.float32)
    coef = np.tanh(rng.normal(0, 1, (batch, priors, mask_dim))).astype(np.float32)
    det_indices = rng.integers(0, priors, (batch, max_dets)).astype(np.int32)
    det_boxes = random_boxes(rng, (batch, max_dets))
    num_dets = rng.integers(0, max_dets + 1, batch).astype(np.int32)
    if batch > 1:
        num_dets[0] = 0
    return MaskCase(proto, coef, det_indices, det_boxes, num_dets, crop_padding)


@st.composite
def mask_cases(draw, max_grid: int = 20, max_dim: int = 8, max_batch: int = 3) -> MaskCase:
    """Hypothesis strategy over small mask-assembly problems."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grid = (draw(st.integers(1, max_grid)), draw(st.integers(1, max_grid)))
    return mask_case(rng, draw(st.integers(1, max_batch)), draw(st.integers(1, 30)), grid,
                     draw(st.integers(1, max_dim)), draw(st.integers(1, 12)), draw(st.integers(0, 2)))
