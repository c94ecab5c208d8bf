"""Inference post-processing, the torch reference: the original's Detect (Fast NMS per class or
across classes), mask assembly and mask pasting (dbolya/yolact, layers/functions/detection.py,
layers/output_utils.py, layers/box_utils.py).

The semantics are the canonical ones every other form (numpy reference, Triton kernels, ONNX
function bodies, the runtime's pasting) is tested against: every sort is stable, so ties in score
go to the lower prior index, and to the lower (class, position) pair in the final sort.

Coordinate spaces: boxes are decoded xyxy relative to the model input (0..1, not clipped);
prototype masks live on the prototype grid [Hp, Wp]; pasted masks on the image grid [H, W].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolact_torch.box_coding import box_iou, decode
from yolact_torch.config import YolactConfig

if TYPE_CHECKING:
    from yolact_torch.yolact import YolactOutput


class NmsResult(NamedTuple):
    """Fast NMS's kept detections of one image, D <= max_dets rows sorted by score descending.

    indices int64 [D] (rows of fast_nms's inputs); classes int64 [D] 0-based, background excluded;
    scores float [D]; boxes float [D, 4] xyxy relative; coef float [D, M].
    """

    indices: Tensor
    classes: Tensor
    scores: Tensor
    boxes: Tensor
    coef: Tensor


class PostprocessOutput(NamedTuple):
    """The ONNX model's outputs (the contract), padded to D = max_dets rows per image; rows past
    num_dets are all zero.

    num_dets int32 [B]; boxes float32 [B, D, 4] xyxy relative (not clipped); scores float32 [B, D];
    classes int32 [B, D] 0-based, background excluded; masks float32 [B, D, Hp, Wp] (sigmoid,
    cropped to the box grown by cfg.crop_padding prototype pixels). box_scores float32 [B, D]:
    YOLACT++ only (None without a maskiou_net), each row's class score before the re-scoring that
    `scores` holds (runtime.contract.BOX_SCORES).
    """

    num_dets: Tensor
    boxes: Tensor
    scores: Tensor
    classes: Tensor
    masks: Tensor
    box_scores: Tensor | None = None


def _upper_triangular_iou_max(boxes: Tensor) -> Tensor:
    """boxes [..., T, 4] in score order -> [..., T]: entry j = max over i < j of IoU(i, j), 0 for j = 0."""
    if boxes.shape[-2] == 0:
        return boxes.new_zeros(boxes.shape[:-1])
    # IoU is never negative, so the zeroed lower triangle (and diagonal) never wins the max.
    return box_iou(boxes, boxes).triu(diagonal=1).max(dim=-2).values


def fast_nms(boxes: Tensor, scores: Tensor, coef: Tensor, *, iou_thresh: float, top_k: int,
             max_dets: int, cross_class: bool = False) -> NmsResult:
    """Fast NMS over one image's candidates (priors that passed the confidence threshold).

    boxes: float [N, 4] xyxy relative. scores: float [K, N] class scores without background
    (the original's layout). coef: float [N, M] mask coefficients, carried along.

    Per class (default): for each class, the candidates sorted by that class's score (stable,
    descending), the first min(top_k, N); IoU among them; a box is kept when its IoU with every
    higher-scoring box of the list is <= iou_thresh -- including boxes that were themselves
    suppressed, which is what makes it fast and keeps a subset of greedy NMS's boxes. The kept
    (class, position) pairs, class-major, are stable-sorted by score and the first max_dets kept.
    Scores are not re-thresholded (a box may be kept for a class it scores <= conf_thresh on,
    as in the original).

    Cross-class: each candidate takes its best class (the lowest class index on ties) and its
    score; one Fast NMS over those, then the first max_dets. The original caps only the per-class
    mode at max_num_detections; here both modes are capped (the ONNX outputs have a fixed size).
    """
    num_candidates = boxes.shape[0]
    num_top = min(top_k, num_candidates)
    if cross_class:
        best_scores = scores.max(dim=0).values
        classes = scores.argmax(dim=0)  # the first maximum: the lowest class on ties
        order = torch.sort(best_scores, descending=True, stable=True).indices[:num_top]
        kept = _upper_triangular_iou_max(boxes[order]) <= iou_thresh
        indices = order[kept][:max_dets]
        return NmsResult(indices, classes[indices], best_scores[indices], boxes[indices], coef[indices])

    num_classes = scores.shape[0]
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    order, sorted_scores = order[:, :num_top], sorted_scores[:, :num_top]           # [K, T]
    kept = _upper_triangular_iou_max(boxes[order]) <= iou_thresh                     # [K, T]
    # Boolean selection walks [K, T] row-major: class-major, then position, as the contract says.
    class_of = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(kept)
    kept_indices, kept_classes, kept_scores = order[kept], class_of[kept], sorted_scores[kept]
    best = torch.sort(kept_scores, descending=True, stable=True).indices[:max_dets]
    indices = kept_indices[best]
    return NmsResult(indices, kept_classes[best], kept_scores[best], boxes[indices], coef[indices])


def sanitize_coordinates(lo: Tensor, hi: Tensor, size: int, padding: float = 0) -> tuple[Tensor, Tensor]:
    """Relative coordinates of one axis -> pixel interval [lo, hi) on a grid of `size` pixels.

    lo, hi: float [...] relative (either order). Returns float (lo, hi): min and max times size,
    grown by `padding` pixels, clamped to [0, size]. Not rounded: pixel i is inside iff lo <= i < hi.
    """
    lo, hi = lo * size, hi * size
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    return (lo - padding).clamp(min=0), (hi + padding).clamp(max=size)


def box_region(boxes: Tensor, height: int, width: int, padding: float = 0) -> Tensor:
    """boxes float [N, 4] xyxy relative -> bool [N, height, width]: the pixels inside each box grown
    by `padding` pixels (the original's crop rule: column x inside iff x1 <= x < x2)."""
    x_lo, x_hi = sanitize_coordinates(boxes[:, 0], boxes[:, 2], width, padding)
    y_lo, y_hi = sanitize_coordinates(boxes[:, 1], boxes[:, 3], height, padding)
    columns = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    inside_x = (columns >= x_lo[:, None]) & (columns < x_hi[:, None])               # [N, W]
    inside_y = (rows >= y_lo[:, None]) & (rows < y_hi[:, None])                     # [N, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def crop_masks(masks: Tensor, boxes: Tensor, padding: float) -> Tensor:
    """Zero every mask outside its box grown by `padding` pixels.

    masks: float [N, H, W]; boxes: float [N, 4] xyxy relative. Returns float [N, H, W].
    """
    inside = box_region(boxes, masks.shape[1], masks.shape[2], padding)
    return masks.masked_fill(~inside, 0)


def assemble_masks(proto: Tensor, coef: Tensor, boxes: Tensor, padding: int) -> Tensor:
    """Instance masks on the prototype grid: sigmoid(proto . coef), cropped to the padded box.

    proto: float [Hp, Wp, M] (NHWC prototypes of one image); coef: float [D, M]; boxes: float
    [D, 4] xyxy relative; padding: prototype pixels added around the box (cfg.crop_padding).
    Returns float [D, Hp, Wp].
    """
    masks = torch.sigmoid(torch.einsum('hwm,dm->dhw', proto, coef))
    return crop_masks(masks, boxes, padding)


def rescore(scores: Tensor, classes: Tensor, masks: Tensor, maskiou_net: nn.Module) -> Tensor:
    """YOLACT++'s mask re-scoring: each score times the mask IoU maskiou_net predicts for its class.

    scores float [D]; classes int [D] 0-based, background excluded; masks float [D, Hp, Wp]
    (assembled: sigmoid, cropped). Returns float [D]. The original (layers/output_utils.py
    postprocess, rescore_mask) keeps the class score for boxes and this one for masks in its COCO
    evaluation, and so does `detect` (box_scores and scores); its display path sorts the
    detections by this one, and so does `detect`.
    """
    predicted_iou = maskiou_net(masks[:, None])                                      # [D, K]
    return scores * predicted_iou.gather(1, classes[:, None].long())[:, 0]


def detect(out: 'YolactOutput', priors: Tensor, cfg: YolactConfig, *, cross_class: bool = False,
           max_dets: int | None = None, maskiou_net: nn.Module | None = None) -> PostprocessOutput:
    """The whole post-processing of a batch: softmax, decode, Fast NMS, mask assembly, and with a
    maskiou_net (YOLACT++: the model's `maskiou_net`) the scores re-scored by `rescore` and the
    detections stable-sorted by them, descending (ties keep Fast NMS's order); box_scores then
    holds each detection's class score before the re-scoring, in the same order.

    out: the model's raw outputs (loc [B, P, 4], conf logits [B, P, C], coef [B, P, M],
    proto [B, Hp, Wp, M]); priors: float [P, 4] cxcywh relative. Thresholds come from cfg
    (conf_thresh, nms_thresh, nms_top_k, crop_padding); max_dets defaults to
    cfg.max_num_detections. A prior is a candidate when its best non-background score is
    > conf_thresh (strict). See `fast_nms` for the per-class and cross-class rules.
    """
    max_dets = cfg.max_num_detections if max_dets is None else int(max_dets)
    scores = torch.softmax(out.conf.float(), dim=-1)[..., 1:]                        # [B, P, K]
    boxes = decode(out.loc.float(), priors, cfg.variances)                          # [B, P, 4]
    coef, proto = out.coef.float(), out.proto.float()
    batch, (proto_h, proto_w) = boxes.shape[0], proto.shape[1:3]
    result = PostprocessOutput(
        num_dets=torch.zeros(batch, dtype=torch.int32),
        boxes=torch.zeros(batch, max_dets, 4),
        scores=torch.zeros(batch, max_dets),
        classes=torch.zeros(batch, max_dets, dtype=torch.int32),
        masks=torch.zeros(batch, max_dets, proto_h, proto_w),
        box_scores=None if maskiou_net is None else torch.zeros(batch, max_dets))
    for b in range(batch):
        candidates = torch.nonzero(scores[b].max(dim=-1).values > cfg.conf_thresh).flatten()
        if len(candidates) == 0:
            continue
        kept = fast_nms(boxes[b, candidates], scores[b, candidates].T, coef[b, candidates],
                        iou_thresh=cfg.nms_thresh, top_k=cfg.nms_top_k, max_dets=max_dets,
                        cross_class=cross_class)
        n = len(kept.indices)
        masks = assemble_masks(proto[b], kept.coef, kept.boxes, cfg.crop_padding)
        det_scores, det_classes, det_boxes = kept.scores, kept.classes, kept.boxes
        if maskiou_net is not None:
            class_scores = det_scores
            det_scores = rescore(det_scores, det_classes, masks, maskiou_net)
            # The original's display order (eval.py prep_display sorts by the re-scored score);
            # stable, so ties keep Fast NMS's order.
            order = torch.sort(det_scores, descending=True, stable=True).indices
            det_scores, det_classes, det_boxes, masks = (det_scores[order], det_classes[order], det_boxes[order],
                                                         masks[order])
            result.box_scores[b, :n] = class_scores[order]
        result.num_dets[b] = n
        result.boxes[b, :n] = det_boxes
        result.scores[b, :n] = det_scores
        result.classes[b, :n] = det_classes.to(torch.int32)
        result.masks[b, :n] = masks
    return result


def paste_masks(masks: Tensor, boxes: Tensor, image_hw: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Masks on the prototype grid -> binary masks on the image grid, only inside their boxes.

    masks: float [N, Hp, Wp]; boxes: float [N, 4] xyxy relative; image_hw: (H, W) in pixels;
    threshold: cfg.mask_threshold. Each mask is resized to (H, W) (bilinear, align_corners=False,
    as the original), thresholded (> threshold), and cleared outside its box in image pixels
    (column x inside iff x1 * W <= x < x2 * W, the crop rule with no padding). The original keeps
    the upsampled crop padding outside the box; the contract keeps masks inside their boxes.
    Returns bool [N, H, W].
    """
    height, width = image_hw
    if masks.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=masks.device)
    resized = F.interpolate(masks[None].float(), size=(height, width), mode='bilinear', align_corners=False)[0]
    return (resized > threshold) & box_region(boxes.float(), height, width)
