"""Fast NMS as one Triton kernel: one program per image does per-class top-k, the upper-triangular
IoU max and the global top-k, all in registers.

Why one kernel with no scratch memory: a TensorRT ahead-of-time plugin launches exactly one kernel
and gives it no workspace, only the op's inputs and outputs. So the kernel streams over the priors
keeping, for a block of classes at a time, the best BLOCK (score, prior) keys seen so far; then per
class it suppresses by the IoU max over higher-ranked boxes and merges the kept keys into the
image's running top-D.

Exact equality with plugins/fast_nms/reference.py comes from sort keys that carry the tie break:
an int64 whose high half orders the float32 score and whose low half is 0xFFFFFFFF minus an index,
so a descending sort puts equal scores in ascending index order (per class: the prior index; in
the global sort: class * P + prior, which is the reference's class-major stable order). The IoU
is the reference's float32 operations in the same order, with a correctly rounded division, and
kernels are compiled without FMA contraction (plugins.triton_compile).

Coordinate space: boxes are xyxy relative; outputs as the `yolact::FastNMS` op (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

# The key of an empty slot: below every real key (the top half of a real key is a float32 order
# key >= -2**31 + 1 for every non-NaN score).
EMPTY_KEY = tl.constexpr(-(2**63))


@triton.jit
def _score_key(score):
    """float32 -> int64 whose signed order is the float order, in the high 32 bits (low bits zero)."""
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 and 0.0 compare equal: one key for both
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ordered.to(tl.int64) << 32


@triton.jit
def _key_score(key):
    """The float32 score of a key made by _score_key (| index)."""
    ordered = (key >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _key_index(key):
    """The index a key carries in its low half (0xFFFFFFFF - index)."""
    return 0xFFFFFFFF - (key & 0xFFFFFFFF)


@triton.jit
def _best_class(scores_ptr, prior, mask, NUM_CLASSES: tl.constexpr, CLASS_CHUNK: tl.constexpr):
    """Per prior [N]: (max score float32, its class, the lowest on ties), reading CLASS_CHUNK
    classes at a time so the tile stays small."""
    best = tl.full(prior.shape, float('-inf'), tl.float32)
    best_class = tl.zeros(prior.shape, tl.int32)
    for first in range(0, NUM_CLASSES, CLASS_CHUNK):
        cls = first + tl.arange(0, CLASS_CHUNK)
        tile = tl.load(scores_ptr + prior[:, None] * NUM_CLASSES + cls[None, :],
                       mask=mask[:, None] & (cls < NUM_CLASSES)[None, :], other=float('-inf')).to(tl.float32)
        chunk_best = tl.max(tile, axis=1)
        chunk_class = tl.argmax(tile, axis=1, tie_break_left=True).to(tl.int32) + first
        better = chunk_best > best  # strict: an equal score in a later chunk is a higher class
        best = tl.where(better, chunk_best, best)
        best_class = tl.where(better, chunk_class, best_class)
    return best, best_class


@triton.jit
def _merge_best(best, new, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Row-wise: the BLOCK largest of best [ROWS, BLOCK] and new [ROWS, BLOCK], sorted descending."""
    both = tl.reshape(tl.join(best, new), (ROWS, 2 * BLOCK))
    ordered = tl.sort(both, dim=1, descending=True)
    first, _ = tl.split(tl.permute(tl.reshape(ordered, (ROWS, 2, BLOCK)), (0, 2, 1)))
    return first


@triton.jit
def fast_nms_kernel(
        boxes_ptr, scores_ptr,  # inputs: [B, P, 4], [B, P, K] (float32 or float16)
        num_priors,  # int32: P
        num_dets_ptr, det_boxes_ptr, det_scores_ptr, det_classes_ptr, det_indices_ptr,  # outputs
        CONF_THRESH: tl.constexpr, IOU_THRESH: tl.constexpr, TOP_K: tl.constexpr, MAX_DETS: tl.constexpr,
        CROSS_CLASS: tl.constexpr, NUM_CLASSES: tl.constexpr, CLASS_CHUNK: tl.constexpr,
        CLASS_BLOCK: tl.constexpr, BLOCK: tl.constexpr, IOU_TILE: tl.constexpr):
    image = tl.program_id(0).to(tl.int64)
    boxes_ptr += image * num_priors * 4
    scores_ptr += image * num_priors * NUM_CLASSES
    conf_thresh = tl.full((), CONF_THRESH, tl.float32)
    iou_thresh = tl.full((), IOU_THRESH, tl.float32)
    empty = tl.full((), EMPTY_KEY, tl.int64)

    slot = tl.arange(0, BLOCK)  # a prior within a chunk, a position in a sorted list, a detection row
    block_row = tl.arange(0, CLASS_BLOCK)
    # Cross-class mode ranks by the best score as one pseudo-class.
    num_ranked: tl.constexpr = 1 if CROSS_CLASS else NUM_CLASSES
    detections = tl.full((BLOCK,), EMPTY_KEY, tl.int64)  # running top of (score, class * P + prior)

    for first_class in range(0, num_ranked, CLASS_BLOCK):
        ranked_class = first_class + block_row
        # 1. Per class of the block, the best BLOCK candidates by (score desc, prior asc).
        best = tl.full((CLASS_BLOCK, BLOCK), EMPTY_KEY, tl.int64)
        for first_prior in range(0, num_priors, BLOCK):
            prior = first_prior + slot
            in_range = prior < num_priors
            top_score, _ = _best_class(scores_ptr, prior, in_range, NUM_CLASSES, CLASS_CHUNK)
            candidate = in_range & (top_score > conf_thresh)
            if CROSS_CLASS:
                values = top_score[None, :]
            else:
                values = tl.load(scores_ptr + prior[None, :] * NUM_CLASSES + ranked_class[:, None],
                                 mask=candidate[None, :] & (ranked_class < num_ranked)[:, None], other=0.0)
                values = values.to(tl.float32)
            keys = _score_key(values) | (0xFFFFFFFF - prior.to(tl.int64))[None, :]
            keys = tl.where(candidate[None, :] & (ranked_class < num_ranked)[:, None], keys, empty)
            if tl.max(keys) > tl.min(best):  # skip the sort when nothing in the chunk can enter
                best = _merge_best(best, keys, CLASS_BLOCK, BLOCK)

        # 2. Per class: IoU max over higher-ranked boxes; 3. merge the kept ones into the detections.
        for row in range(CLASS_BLOCK):
            ranked = first_class + row
            if ranked < num_ranked:
                keys = tl.max(tl.where(block_row[:, None] == row, best, empty), axis=0)  # [BLOCK], descending
                valid = (keys != empty) & (slot < TOP_K)
                prior = tl.where(valid, _key_index(keys), 0)
                x1 = tl.load(boxes_ptr + prior * 4 + 0, mask=valid, other=0.0).to(tl.float32)
                y1 = tl.load(boxes_ptr + prior * 4 + 1, mask=valid, other=0.0).to(tl.float32)
                x2 = tl.load(boxes_ptr + prior * 4 + 2, mask=valid, other=0.0).to(tl.float32)
                y2 = tl.load(boxes_ptr + prior * 4 + 3, mask=valid, other=0.0).to(tl.float32)
                area = (x2 - x1) * (y2 - y1)
                num_valid = tl.sum(valid.to(tl.int32))
                iou_max = tl.zeros((BLOCK,), tl.float32)
                for first_row in range(0, num_valid, IOU_TILE):
                    position = first_row + tl.arange(0, IOU_TILE)
                    prior_i = tl.gather(prior, position, 0)
                    valid_i = position < num_valid
                    ix1 = tl.load(boxes_ptr + prior_i * 4 + 0, mask=valid_i, other=0.0).to(tl.float32)
                    iy1 = tl.load(boxes_ptr + prior_i * 4 + 1, mask=valid_i, other=0.0).to(tl.float32)
                    ix2 = tl.load(boxes_ptr + prior_i * 4 + 2, mask=valid_i, other=0.0).to(tl.float32)
                    iy2 = tl.load(boxes_ptr + prior_i * 4 + 3, mask=valid_i, other=0.0).to(tl.float32)
                    area_i = (ix2 - ix1) * (iy2 - iy1)
                    width = tl.maximum(tl.minimum(ix2[:, None], x2[None, :]) - tl.maximum(ix1[:, None], x1[None, :]), 0.0)
                    height = tl.maximum(tl.minimum(iy2[:, None], y2[None, :]) - tl.maximum(iy1[:, None], y1[None, :]), 0.0)
                    inter = width * height
                    union = area_i[:, None] + area[None, :] - inter
                    iou = tl.where(union == 0.0, 0.0, tl.math.div_rn(inter, union))
                    above = valid_i[:, None] & (position[:, None] < slot[None, :])
                    iou_max = tl.maximum(iou_max, tl.max(tl.where(above, iou, 0.0), axis=0))
                kept = valid & (iou_max <= iou_thresh)
                flat = ranked.to(tl.int64) * num_priors + prior
                kept_keys = tl.where(kept, ((keys >> 32) << 32) | (0xFFFFFFFF - flat), empty)
                if tl.max(kept_keys) > tl.min(detections):
                    detections = tl.reshape(
                        _merge_best(detections[None, :], kept_keys[None, :], 1, BLOCK), (BLOCK,))

    # 4. The first MAX_DETS detections, decoded; every other row zero.
    is_detection = (detections != empty) & (slot < MAX_DETS)
    flat = tl.where(is_detection, _key_index(detections), 0)
    prior = flat % num_priors
    det_class = flat // num_priors
    if CROSS_CLASS:
        _, best_class = _best_class(scores_ptr, prior, is_detection, NUM_CLASSES, CLASS_CHUNK)
        det_class = best_class.to(tl.int64)
    out_row = image * MAX_DETS + slot
    in_output = slot < MAX_DETS
    score = tl.where(is_detection, _key_score(detections), 0.0)
    tl.store(det_scores_ptr + out_row, score.to(det_scores_ptr.dtype.element_ty), mask=in_output)
    tl.store(det_classes_ptr + out_row, tl.where(is_detection, det_class, 0).to(tl.int32), mask=in_output)
    tl.store(det_indices_ptr + out_row, prior.to(tl.int32), mask=in_output)
    coord = tl.arange(0, 4)
    box = tl.load(boxes_ptr + prior[:, None] * 4 + coord[None, :], mask=is_detection[:, None], other=0.0)
    tl.store(det_boxes_ptr + out_row[:, None] * 4 + coord[None, :], box.to(det_boxes_ptr.dtype.element_ty),
             mask=in_output[:, None])
    tl.store(num_dets_ptr + image, tl.sum(is_detection.to(tl.int32)))


@dataclass(frozen=True)
class FastNMSKernelConfig:
    """The compile-time constants of one specialisation of `fast_nms_kernel`: the op's attributes
    and the number of classes K. The launcher and the TensorRT plugin both derive them here."""

    conf_thresh: float
    iou_thresh: float
    top_k: int
    max_dets: int
    cross_class: bool
    num_classes: int
    # Classes ranked per pass over the priors: more classes per pass read the scores fewer times
    # but sort bigger blocks (and compile slower: 16 takes minutes).
    class_block: int = 8
    num_warps: int = 8

    def __post_init__(self):
        if self.top_k < 1 or self.max_dets < 1 or self.num_classes < 1:
            raise ValueError(f'FastNMS needs top_k, max_dets and the class count >= 1; got top_k={self.top_k}, '
                             f'max_dets={self.max_dets}, K={self.num_classes}')

    @property
    def block(self) -> int:
        """Slots per sorted list: top_k and max_dets rounded up to a power of two (at least 16)."""
        return max(16, triton.next_power_of_2(self.top_k), triton.next_power_of_2(self.max_dets))

    def constexprs(self) -> dict:
        import numpy as np

        classes_pad = triton.next_power_of_2(self.num_classes)
        return dict(
            # float32 thresholds, as every other form of the op compares them
            CONF_THRESH=float(np.float32(self.conf_thresh)), IOU_THRESH=float(np.float32(self.iou_thresh)),
            TOP_K=int(self.top_k), MAX_DETS=int(self.max_dets), CROSS_CLASS=bool(self.cross_class),
            NUM_CLASSES=int(self.num_classes), CLASS_CHUNK=min(16, classes_pad),
            CLASS_BLOCK=1 if self.cross_class else min(self.class_block, classes_pad), BLOCK=self.block,
            IOU_TILE=min(32, self.block))



def signature(float_type: str) -> dict:
    """Triton argument types for float inputs of `float_type` ('fp32' | 'fp16')."""
    types = {'boxes_ptr': f'*{float_type}', 'scores_ptr': f'*{float_type}', 'num_priors': 'i32',
             'num_dets_ptr': '*i32', 'det_boxes_ptr': f'*{float_type}', 'det_scores_ptr': f'*{float_type}',
             'det_classes_ptr': '*i32', 'det_indices_ptr': '*i32'}
    return types


def fast_nms(boxes, scores, *, conf_thresh: float, iou_thresh: float, top_k: int, max_dets: int,
             cross_class: bool = False, outputs=None):
    """Launch the kernel on torch tensors (CUDA, or CPU under TRITON_INTERPRET=1).

    boxes float32/float16 [B, P, 4] xyxy relative; scores [B, P, K] of the same dtype. Returns
    (num_dets int32 [B], det_boxes [B, D, 4], det_scores [B, D], det_classes int32 [B, D],
    det_indices int32 [B, D]) with D = max_dets, as the `yolact::FastNMS` op. `outputs`, when
    given, are those five tensors preallocated (every element is written).
    """
    import torch

    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f'fast_nms takes boxes [B, P, 4] and scores [B, P, K] with the same B and P; '
                         f'got boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}')
    if boxes.dtype != scores.dtype or boxes.dtype not in (torch.float32, torch.float16):
        raise ValueError(f'fast_nms takes float32 or float16 boxes and scores of one dtype; got {boxes.dtype}, '
                         f'{scores.dtype}')
    batch, num_priors, num_classes = scores.shape
    if num_classes * num_priors >= 2**32:  # class * P + prior must fit a key's low 32 bits
        raise ValueError(f'fast_nms supports K * P < 2**32; got K={num_classes}, P={num_priors}')
    config = FastNMSKernelConfig(conf_thresh, iou_thresh, top_k, max_dets, cross_class, num_classes)
    device, dtype = boxes.device, boxes.dtype
    if outputs is None:
        outputs = (torch.empty(batch, dtype=torch.int32, device=device),
                   torch.empty(batch, max_dets, 4, dtype=dtype, device=device),
                   torch.empty(batch, max_dets, dtype=dtype, device=device),
                   torch.empty(batch, max_dets, dtype=torch.int32, device=device),
                   torch.empty(batch, max_dets, dtype=torch.int32, device=device))
    num_dets, det_boxes, det_scores, det_classes, det_indices = outputs
    if batch:
        fast_nms_kernel[(batch,)](
            boxes.contiguous(), scores.contiguous(), num_priors, num_dets, det_boxes, det_scores, det_classes,
            det_indices, **config.constexprs(), num_warps=config.num_warps, enable_fp_fusion=False)
    return num_dets, det_boxes, det_scores, det_classes, det_indices
