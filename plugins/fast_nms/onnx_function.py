"""The `yolact::FastNMS` ONNX function: its body in standard ONNX ops, and the node that calls it.

The exporter takes both from here (one source of truth). onnxruntime runs the body; the TensorRT
ONNX parser maps the node to the `yolact::FastNMS` plugin through its `plugin_namespace` and
`plugin_version` attributes. The body equals plugins/fast_nms/reference.py index for index:
ONNX TopK breaks ties by the lower index, which is the reference's stable sort.

Inputs: boxes float/float16 [B, P, 4] xyxy relative; scores float/float16 [B, P, K] (no background).
Outputs: num_dets int32 [B]; det_boxes [B, D, 4] and det_scores [B, D] in the input's float type;
det_classes int32 [B, D]; det_indices int32 [B, D]; D = max_dets, rows past num_dets zero.
Batch B and prior count P may be dynamic.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from plugins import DOMAIN, FAST_NMS_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.onnx_builder import FunctionBuilder

INPUTS = ['boxes', 'scores']
OUTPUTS = ['num_dets', 'det_boxes', 'det_scores', 'det_classes', 'det_indices']
# Row blocks of the upper-triangular IoU step (see make_function). On 2 cores at K = 80 classes:
# 4, 8 and 16 alike and ~25% faster than 1 at T = 200 (AMD Zen 3); at T = 150 (Intel Xeon with
# AVX-512), FastNMS + MaskAssembly took 6.5 ms at batch 1 with 4 against 7.1 with 8 and 9.0 with 1,
# and 4 and 8 alike at batch 4: fewer blocks mean fewer nodes, whose overhead dominates at batch 1.
ROW_BLOCKS = 4
ATTRIBUTES = ['conf_thresh', 'iou_thresh', 'top_k', 'max_dets', 'cross_class', 'plugin_namespace', 'plugin_version']


def make_function(opset: int = 19) -> onnx.FunctionProto:
    """The FunctionProto of `yolact::FastNMS`, importing the default domain at `opset` (18..22)."""
    f = FunctionBuilder(DOMAIN, FAST_NMS_OP, INPUTS, OUTPUTS, ATTRIBUTES, opset, __doc__)
    boxes = f.op('Cast', 'boxes', to=TensorProto.FLOAT)
    scores = f.op('Cast', 'scores', to=TensorProto.FLOAT)
    conf_thresh = f.attr_scalar('conf_thresh', AttributeProto.FLOAT)
    iou_thresh = f.attr_scalar('iou_thresh', AttributeProto.FLOAT)
    top_k = f.attr_scalar('top_k', AttributeProto.INT)
    max_dets = f.attr_scalar('max_dets', AttributeProto.INT)
    cross_class = f.op('Cast', f.attr_scalar('cross_class', AttributeProto.INT), to=TensorProto.BOOL)
    zero, one = f.const(0), f.const(1)
    zero_f = f.const(0.0, TensorProto.FLOAT)
    neg_inf, pos_inf = f.const(float('-inf'), TensorProto.FLOAT), f.const(float('inf'), TensorProto.FLOAT)
    axis_1, axis_2, axis_3 = f.const([1]), f.const([2]), f.const([3])

    # 1. Candidates: priors whose best score is above conf_thresh.
    shape = f.op('Shape', scores)
    batch = f.op('Slice', shape, f.const([0]), f.const([1]))  # [1]
    num_classes = f.op('Gather', shape, f.const(2))
    best = f.op('ReduceMax', scores, axis_2, keepdims=1)  # [B, P, 1]
    is_candidate = f.op('Greater', best, conf_thresh)  # [B, P, 1]
    num_candidates = f.op('ReduceSum', f.op('Cast', is_candidate, to=TensorProto.FLOAT), axis_1, keepdims=1)
    most_candidates = f.op('Cast', f.op('ReduceMax', num_candidates, keepdims=0), to=TensorProto.INT64)
    # The candidates first, in ascending prior index, then non-candidates: N = max(most candidates of
    # any image, 1) rows. Later steps sort [B, K, N] instead of [B, K, P]: a trained model leaves
    # a few hundred to a few thousand of ~19k priors above conf_thresh.
    num_rows = f.op('Reshape', f.op('Max', most_candidates, one), f.const([1]))
    prior_index = f.op('Range', zero, f.op('Gather', shape, one), one)  # [P]
    row_key = f.op('Where', f.op('Squeeze', is_candidate, axis_2), f.op('Neg', prior_index), f.const(-2**63))
    _, rows = f.op('TopK', row_key, num_rows, axis=1, largest=1, sorted=1, outputs=2)  # [B, N] prior indices
    scores_in_rows = f.op('GatherND', scores, f.op('Unsqueeze', rows, axis_2), batch_dims=1)  # [B, N, K]
    best_in_rows = f.op('ReduceMax', scores_in_rows, axis_2, keepdims=1)  # [B, N, 1]

    # 2. The class-score table each class sorts. Cross-class mode ranks every prior by its best score
    # in class column 0 and leaves the other columns empty, so both modes share the steps below.
    # Max/Min with +-inf instead of Where over [B, P, K] (onnxruntime's Where is several times
    # slower): max(score, -inf) = score, max(score, best) = best, min(v, +inf) = v, min(v, -inf) = -inf.
    class_range = f.op('Range', zero, num_classes, one)  # [K]
    column_in_use = f.op('Or', f.op('Not', cross_class), f.op('Equal', class_range, zero))  # [K]
    table = f.op('Max', scores_in_rows, f.op('Where', cross_class, best_in_rows, neg_inf))  # [B, N, K]
    table = f.op('Min', table, f.op('Where', f.op('Greater', best_in_rows, conf_thresh), pos_inf, neg_inf))
    table = f.op('Min', table, f.op('Where', column_in_use, pos_inf, neg_inf))  # unused columns: -inf
    table = f.op('Transpose', table, perm=[0, 2, 1])  # [B, K, N]

    # 3. Per class the top T = max(min(top_k, most candidates of any image), 1) by score (T <= N):
    # the O(K T^2) IoU step below costs only what the candidates need; T >= 1 keeps every shape
    # non-empty. ONNX TopK breaks ties by the lower row, which is the lower prior index. Positions
    # >= the image's candidate count hold non-candidates (-inf) and are not valid.
    num_sorted = f.op('Reshape', f.op('Max', f.op('Min', top_k, most_candidates), one), f.const([1]))
    sorted_scores, sorted_rows = f.op('TopK', table, num_sorted, axis=-1, largest=1, sorted=1, outputs=2)
    sorted_priors = f.op('Reshape', f.op('GatherElements', rows, f.op('Reshape', sorted_rows, f.op(
        'Concat', batch, f.const([-1]), axis=0)), axis=1), f.op('Shape', sorted_rows))  # [B, K, T]
    position = f.op('Cast', f.op('Range', zero, f.op('Squeeze', num_sorted), one), to=TensorProto.FLOAT)  # [T]
    valid = f.op('And', f.op('Less', position, num_candidates),  # [B, 1, T] vs [B, 1, 1]
                 f.op('Unsqueeze', column_in_use, axis_1))  # [K, 1]

    # 4. Upper-triangular IoU max among each class's sorted boxes (the reference's float32 op order).
    flat_priors = f.op('Reshape', sorted_priors, f.op('Concat', batch, f.const([-1, 1]), axis=0))
    sorted_boxes = f.op('GatherND', boxes, flat_priors, batch_dims=1)  # [B, K*T, 4]
    sorted_boxes = f.op('Reshape', sorted_boxes, f.op('Concat', batch, f.op('Reshape', num_classes, f.const([1])),
                                                      num_sorted, f.const([4]), axis=0))  # [B, K, T, 4]
    x1, y1, x2, y2 = (f.op('Gather', sorted_boxes, f.const(c), axis=3) for c in range(4))  # [B, K, T]
    area = f.op('Mul', f.op('Sub', x2, x1), f.op('Sub', y2, y1))
    # keep j iff max(0, IoU(i, j) for i < j) <= iou_thresh, i.e. iff 0 <= iou_thresh and no IoU(i, j),
    # i < j, exceeds it. One Greater against a threshold matrix (iou_thresh above the diagonal, +inf
    # elsewhere) replaces the reference's two Wheres: where the union is 0 the intersection is 0 too
    # (each clamped side is at most the box's own, so inter <= both areas; an inverted box has
    # inter = 0), so inter / union is NaN there and NaN > t is false, the reference's IoU of 0.
    # The rows i go in ROW_BLOCKS blocks of c = ceil(T / ROW_BLOCKS), block r against the columns
    # j >= r c only: about half the [T, T] pairs, and each block's tensors stay in the CPU caches.
    block = f.op('Div', f.op('Add', num_sorted, f.const([ROW_BLOCKS - 1])), f.const([ROW_BLOCKS]))  # [1]
    exceeded = []
    for r in range(ROW_BLOCKS):
        first = f.op('Mul', block, f.const([r]))
        rows, cols = (first, f.op('Add', first, block)), (first, num_sorted)
        row = lambda v: f.op('Unsqueeze', f.op('Slice', v, *rows, axis_2), axis_3)  # [B, K, c, 1]
        col = lambda v: f.op('Unsqueeze', f.op('Slice', v, *cols, axis_2), axis_2)  # [B, K, 1, T - r c]
        width = f.op('Max', f.op('Sub', f.op('Min', row(x2), col(x2)), f.op('Max', row(x1), col(x1))), zero_f)
        height = f.op('Max', f.op('Sub', f.op('Min', row(y2), col(y2)), f.op('Max', row(y1), col(y1))), zero_f)
        inter = f.op('Mul', width, height)  # [B, K, c, T - r c]
        union = f.op('Sub', f.op('Add', row(area), col(area)), inter)
        above_diagonal = f.op('Less', f.op('Unsqueeze', f.op('Slice', position, *rows), f.const([1])),
                              f.op('Slice', position, *cols))  # [c, T - r c]: i < j
        threshold = f.op('Where', above_diagonal, iou_thresh, pos_inf)
        # float 0/1, not uint8: TensorRT takes no UINT8 intermediate tensors; the max of 0/1 is exact.
        exceeds = f.op('Cast', f.op('Greater', f.op('Div', inter, union), threshold), to=TensorProto.FLOAT)
        exceeds = f.op('ReduceMax', exceeds, axis_2, keepdims=0)  # [B, K, T - r c], for columns r c..T-1
        # Padded in front to T columns (the pad is 0 = not exceeded; a block past T is empty).
        front = f.op('Sub', num_sorted, f.op('Slice', f.op('Shape', exceeds), axis_2, f.const([3])))
        exceeded.append(f.op('Pad', exceeds, f.op('Concat', f.const([0, 0]), front, f.const([0, 0, 0]), axis=0)))
    suppressed = f.op('Cast', f.op('Max', *exceeded), to=TensorProto.BOOL)  # [B, K, T]
    keep = f.op('And', f.op('And', f.op('Not', suppressed), f.op('LessOrEqual', zero_f, iou_thresh)), valid)

    # 5. Global sort of the kept (class, position) pairs, class-major: TopK's lower-index tie break
    # is the reference's stable sort. D columns of -inf make TopK's k = D valid for any K*T.
    kept_scores = f.op('Reshape', f.op('Where', keep, sorted_scores, neg_inf), f.op('Concat', batch, f.const([-1]), axis=0))
    max_dets_1 = f.op('Reshape', max_dets, f.const([1]))
    padding = f.op('Expand', neg_inf, f.op('Concat', batch, max_dets_1, axis=0))
    top_scores, top_pairs = f.op('TopK', f.op('Concat', kept_scores, padding, axis=1), max_dets_1,
                                 axis=1, largest=1, sorted=1, outputs=2)  # [B, D]
    num_pairs = f.op('Mul', num_classes, f.op('Squeeze', num_sorted))
    top_pairs = f.op('Min', top_pairs, f.op('Sub', num_pairs, one))  # padding columns: any real pair
    num_kept = f.op('ReduceSum', f.op('Cast', keep, to=TensorProto.FLOAT), f.const([1, 2]), keepdims=0)
    num_dets = f.op('Min', f.op('Cast', num_kept, to=TensorProto.INT64), max_dets)  # [B]
    is_detection = f.op('Less', f.op('Range', zero, max_dets, one), f.op('Unsqueeze', num_dets, axis_1))  # [B, D]

    priors = f.op('GatherElements', f.op('Reshape', sorted_priors, f.op('Concat', batch, f.const([-1]), axis=0)),
                  top_pairs, axis=1)  # [B, D]
    det_priors = f.op('Unsqueeze', priors, f.const([2]))  # [B, D, 1]
    # Cross-class: the best class of the D detections' priors only (lowest index on ties).
    best_class = f.op('ArgMax', f.op('GatherND', scores, det_priors, batch_dims=1), axis=2, keepdims=0,
                      select_last_index=0)  # [B, D]
    classes = f.op('Where', cross_class, best_class, f.op('Div', top_pairs, f.op('Squeeze', num_sorted)))
    det_boxes = f.op('GatherND', boxes, det_priors, batch_dims=1)  # [B, D, 4]

    f.op('Cast', num_dets, to=TensorProto.INT32, outputs=['num_dets'])
    f.op('CastLike', f.op('Where', f.op('Unsqueeze', is_detection, f.const([2])), det_boxes, zero_f), 'boxes',
         outputs=['det_boxes'])
    f.op('CastLike', f.op('Where', is_detection, top_scores, zero_f), 'scores', outputs=['det_scores'])
    f.op('Cast', f.op('Where', is_detection, classes, zero), to=TensorProto.INT32, outputs=['det_classes'])
    f.op('Cast', f.op('Where', is_detection, priors, zero), to=TensorProto.INT32, outputs=['det_indices'])
    return f.build()


def make_node(inputs: list[str], outputs: list[str], *, conf_thresh: float, iou_thresh: float, top_k: int,
              max_dets: int, cross_class: bool, name: str = 'fast_nms') -> onnx.NodeProto:
    """A `yolact::FastNMS` node with every attribute the function body and the plugin read.

    inputs: [boxes, scores] value names; outputs: [num_dets, det_boxes, det_scores, det_classes,
    det_indices] value names.
    """
    if len(inputs) != len(INPUTS) or len(outputs) != len(OUTPUTS):
        raise ValueError(f'FastNMS takes inputs {INPUTS} and outputs {OUTPUTS}; got {inputs} -> {outputs}')
    if int(top_k) < 1 or int(max_dets) < 1:
        raise ValueError(f'FastNMS needs top_k >= 1 and max_dets >= 1; got top_k={top_k}, max_dets={max_dets}')
    return helper.make_node(
        FAST_NMS_OP, inputs, outputs, name=name, domain=DOMAIN,
        conf_thresh=float(conf_thresh), iou_thresh=float(iou_thresh), top_k=int(top_k),
        max_dets=int(max_dets), cross_class=int(bool(cross_class)),
        plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
