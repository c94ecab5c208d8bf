"""The original's training losses (dbolya/yolact, layers/modules/multibox_loss.py), for the
configuration every official YOLACT model was trained with: softmax class confidence with online
hard negative mining, smooth L1 on the SSD box coding, linear-combination mask BCE cropped to the
ground-truth box and normalised by its area, and the auxiliary semantic segmentation BCE; for
YOLACT++ (configs with maskiou_net) also the maskiou_net loss on the same masks.

Boxes are xyxy relative to the model input (0..1); ground-truth masks are at the model input size.
Crowd annotations are not used (the data loader skips them), so the original's crowd exemption of
priors is not needed here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolact_torch.box_coding import box_iou, center_size, encode, point_form
from yolact_torch.config import YolactConfig
from yolact_torch.postprocess import assemble_masks
from yolact_torch.yolact import YolactOutput


class Target(NamedTuple):
    """Ground truth of one image: boxes float32 [G, 4] xyxy relative; labels int64 [G] 0-based
    (background excluded); masks uint8 or float [G, H, W] 0/1 at the model input size."""

    boxes: Tensor
    labels: Tensor
    masks: Tensor


class Match(NamedTuple):
    """Per-prior targets of one image (P priors).

    loc: float32 [P, 4] encoded box of the matched truth; conf: int64 [P], 0 background,
    c + 1 for class c, -1 neutral (IoU between the negative and positive thresholds);
    truth_index: int64 [P] the matched truth (meaningful where conf > 0).
    """

    loc: Tensor
    conf: Tensor
    truth_index: Tensor


class LossTerms(NamedTuple):
    """Scalar losses, already weighted by the config's alphas and normalised as the original:
    box, conf, mask and maskiou by the number of positive priors in the batch, semantic by the
    batch size. maskiou is 0 for configs without a maskiou_net (YOLACT)."""

    box: Tensor
    conf: Tensor
    mask: Tensor
    semantic: Tensor
    maskiou: Tensor

    @property
    def total(self) -> Tensor:
        return self.box + self.conf + self.mask + self.semantic + self.maskiou


def match(truths: Tensor, labels: Tensor, priors: Tensor, cfg: YolactConfig) -> Match:
    """Assign each prior a ground-truth box (the original's `match`).

    truths: float [G, 4] xyxy relative; labels: int64 [G] 0-based; priors: float [P, 4] cxcywh.
    A prior takes the truth it overlaps most; below cfg.positive_iou_threshold it is neutral,
    below cfg.negative_iou_threshold background. Each truth also claims its best prior (truths
    with the highest overlap first), so no truth goes unmatched.
    """
    num_priors = priors.shape[0]
    if truths.shape[0] == 0:
        return Match(priors.new_zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.long),
                     torch.zeros(num_priors, dtype=torch.long))
    overlaps = box_iou(truths, point_form(priors))                                   # [G, P]
    best_truth_overlap, best_truth_index = overlaps.max(0)
    for _ in range(truths.shape[0]):
        best_prior_overlap, best_prior_index = overlaps.max(1)
        truth = best_prior_overlap.argmax()
        prior = best_prior_index[truth]
        overlaps[:, prior] = -1  # no other truth takes this prior
        overlaps[truth, :] = -1  # this truth is done
        best_truth_overlap[prior] = 2  # above any threshold
        best_truth_index[prior] = truth
    conf = labels[best_truth_index] + 1
    conf[best_truth_overlap < cfg.positive_iou_threshold] = -1
    conf[best_truth_overlap < cfg.negative_iou_threshold] = 0
    loc = encode(truths[best_truth_index], priors, cfg.variances)
    return Match(loc, conf, best_truth_index)


def box_loss(loc: Tensor, loc_t: Tensor, positive: Tensor, cfg: YolactConfig) -> Tensor:
    """Smooth L1 over positive priors, summed, times cfg.bbox_alpha. loc, loc_t: [B, P, 4]; positive: bool [B, P]."""
    return F.smooth_l1_loss(loc[positive], loc_t[positive], reduction='sum') * cfg.bbox_alpha


def ohem_conf_loss(conf: Tensor, conf_t: Tensor, cfg: YolactConfig) -> Tensor:
    """Softmax cross-entropy over the positives and the hardest negatives, summed, times cfg.conf_alpha.

    conf: float [B, P, C] logits; conf_t: int64 [B, P] (-1 neutral, 0 background, c + 1 class c).
    Per image, negatives are ranked by their background loss -log softmax(conf)[0]; the top
    cfg.ohem_negpos_ratio x (number of positives) are kept. Neutrals never count.
    """
    positive = conf_t > 0
    neutral = conf_t < 0
    with torch.no_grad():
        background_loss = torch.logsumexp(conf, dim=-1) - conf[..., 0]              # [B, P]
        background_loss[positive | neutral] = 0
        rank = background_loss.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        num_neg = (cfg.ohem_negpos_ratio * positive.sum(1, keepdim=True)).clamp(max=conf.shape[1] - 1)
        negative = (rank < num_neg) & ~positive & ~neutral
    chosen = positive | negative
    return F.cross_entropy(conf[chosen], conf_t[chosen], reduction='sum') * cfg.conf_alpha


def downsample_masks(masks: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """Ground-truth masks [G, H, W] -> float32 [G, h, w] 0/1: bilinear (align_corners=False), > 0.5."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size_hw), dtype=torch.float32)
    resized = F.interpolate(masks[None].float(), size=size_hw, mode='bilinear', align_corners=False)[0]
    return (resized > 0.5).float()


class MaskSample(NamedTuple):
    """The positive priors' masks that one image trains (D of them), on the prototype grid.

    pred: float [D, Hp, Wp] sigmoid(proto . coef) cropped to the matched ground-truth box grown by
    cfg.crop_padding (differentiable); truth: float [D, Hp, Wp] 0/1, the matched ground truth
    downsampled; boxes: float [D, 4] the matched ground-truth boxes, xyxy relative; labels: int64
    [D] their classes, 0-based (background excluded).
    """

    pred: Tensor
    truth: Tensor
    boxes: Tensor
    labels: Tensor


def mask_samples(coef: Tensor, proto: Tensor, matches: list[Match], targets: list[Target], cfg: YolactConfig,
                 generator: torch.Generator | None = None) -> list[MaskSample]:
    """The masks each image trains, for `mask_loss` and `maskiou_loss` alike (the original's
    lincomb_mask_loss): every positive prior, at most cfg.masks_to_train per image (chosen at
    random with `generator`). coef: float [B, P, M]; proto: float [B, Hp, Wp, M]. Images
    without positives are left out."""
    proto_h, proto_w = proto.shape[1:3]
    samples = []
    for b, (m, target) in enumerate(zip(matches, targets)):
        positive = torch.nonzero(m.conf > 0).flatten()
        if len(positive) == 0:
            continue
        if len(positive) > cfg.masks_to_train:
            positive = positive[torch.randperm(len(positive), generator=generator)[:cfg.masks_to_train]]
        truth = m.truth_index[positive]
        gt_boxes = target.boxes[truth]
        samples.append(MaskSample(
            pred=assemble_masks(proto[b], coef[b, positive], gt_boxes, cfg.crop_padding),
            truth=downsample_masks(target.masks, (proto_h, proto_w))[truth], boxes=gt_boxes,
            labels=target.labels[truth]))
    return samples


def mask_loss(samples: list[MaskSample], cfg: YolactConfig) -> Tensor:
    """Mask BCE of the sampled masks (`mask_samples`), times cfg.mask_alpha (the original's lincomb loss).

    Each mask's summed BCE against its ground truth is divided by its box's area in prototype
    pixels (the original's ROI-pooling emulation; its extra factor Hp * Wp and division by
    Hp * Wp cancel, so neither appears here). Returns the sum over all masks (a scalar).
    """
    total = torch.zeros(())
    for sample in samples:
        proto_h, proto_w = sample.pred.shape[1:]
        bce = F.binary_cross_entropy(sample.pred.clamp(0, 1), sample.truth, reduction='none').sum(dim=(1, 2))
        box_wh = center_size(sample.boxes)[:, 2:] * sample.boxes.new_tensor([proto_w, proto_h])
        total = total + (bce / box_wh[:, 0] / box_wh[:, 1]).sum()
    return total * cfg.mask_alpha


def mask_iou(masks: Tensor, truths: Tensor) -> Tensor:
    """IoU of each 0/1 mask with its ground truth: float [D, H, W] x2 -> float [D]."""
    intersection = (masks * truths).sum(dim=(1, 2))
    union = masks.sum(dim=(1, 2)) + truths.sum(dim=(1, 2)) - intersection
    return intersection / union


def maskiou_loss(samples: list[MaskSample], maskiou_net: nn.Module, cfg: YolactConfig) -> Tensor:
    """YOLACT++'s maskiou_net loss (the original's _mask_iou_loss), times cfg.maskiou_alpha.

    For each sampled mask whose ground truth covers more than cfg.discard_mask_area prototype
    pixels, maskiou_net sees the predicted mask (float, cropped, as at inference) and its output
    for the ground truth's class is pulled (smooth L1, summed) towards the IoU of the mask
    binarised at 0.5 with the ground truth. As in the original, the input is not detached, so the
    loss also reaches the prototypes and coefficients; the target carries no gradient.
    Returns a scalar (0 when no mask is large enough).
    """
    if not samples:
        return torch.zeros(())
    pred, truth, labels = (torch.cat(parts) for parts in zip(*((s.pred, s.truth, s.labels) for s in samples)))
    keep = truth.sum(dim=(1, 2)) > cfg.discard_mask_area
    if not keep.any():
        return torch.zeros(())
    pred, truth, labels = pred[keep], truth[keep], labels[keep]
    with torch.no_grad():
        target = mask_iou((pred > 0.5).float(), truth)
    predicted = maskiou_net(pred[:, None]).gather(1, labels[:, None])[:, 0]
    return F.smooth_l1_loss(predicted, target, reduction='sum') * cfg.maskiou_alpha


def semantic_loss(segm: Tensor, targets: list[Target], cfg: YolactConfig) -> Tensor:
    """BCE-with-logits of the semantic segmentation head, summed per image and divided by its
    pixel count, summed over the batch, times cfg.semantic_segmentation_alpha.

    segm: float [B, K, h, w] logits, K = num_classes - 1. Class k's target is the union of its
    instances' masks downsampled to (h, w).
    """
    num_classes, height, width = segm.shape[1:]
    total = segm.new_zeros(())
    for b, target in enumerate(targets):
        segment_t = segm.new_zeros(num_classes, height, width)
        masks = downsample_masks(target.masks, (height, width))
        for label, mask in zip(target.labels.tolist(), masks):
            segment_t[label] = torch.maximum(segment_t[label], mask)
        total = total + F.binary_cross_entropy_with_logits(segm[b], segment_t, reduction='sum')
    return total / (height * width) * cfg.semantic_segmentation_alpha


def yolact_loss(out: YolactOutput, priors: Tensor, targets: list[Target], cfg: YolactConfig,
                generator: torch.Generator | None = None, maskiou_net: nn.Module | None = None) -> LossTerms:
    """All losses of a batch. out: the model's training-mode outputs (segm not None);
    priors: float [P, 4] cxcywh relative; targets: one per image. `generator` draws the masks
    trained when an image has more than cfg.masks_to_train positives (pass a seeded one for
    reproducible steps). maskiou_net: the model's (YOLACT++), trained on the same masks; None
    gives a maskiou term of 0."""
    matches = [match(t.boxes, t.labels, priors, cfg) for t in targets]
    loc_t = torch.stack([m.loc for m in matches])
    conf_t = torch.stack([m.conf for m in matches])
    positive = conf_t > 0
    # The original divides by the positive count unguarded; a batch without positives has no
    # box, mask or positive conf loss, so dividing by 1 keeps its hard-negative loss finite.
    num_pos = positive.sum().clamp(min=1).float()
    batch = len(targets)
    semantic = (semantic_loss(out.segm, targets, cfg) if out.segm is not None
                else out.loc.new_zeros(()))
    samples = mask_samples(out.coef, out.proto, matches, targets, cfg, generator)
    return LossTerms(
        box=box_loss(out.loc, loc_t, positive, cfg) / num_pos,
        conf=ohem_conf_loss(out.conf, conf_t, cfg) / num_pos,
        mask=mask_loss(samples, cfg) / num_pos,
        semantic=semantic / batch,
        maskiou=(maskiou_loss(samples, maskiou_net, cfg) if maskiou_net is not None else torch.zeros(())) / num_pos)
