"""Append YOLACT's post-processing to a traced network: the `yolact::FastNMS` and
`yolact::MaskAssembly` function nodes (bodies and nodes from plugins/*/onnx_function.py), and for
YOLACT++ the mask re-scoring (yolact_torch.postprocess.rescore) and the stable sort by the re-scored
score (yolact_torch.postprocess.detect) as standard ops after them.

The traced network's outputs (names DECODED_HEAD_NAMES, shapes as export.graph.DecodedHead) become
the ops' inputs, and the graph's outputs become the model contract (README, "The model contract"):
num_dets int32 [B], boxes float32 [B, D, 4], scores float32 [B, D], classes int32 [B, D],
masks float32 [B, D, Hp, Wp], and for YOLACT++ box_scores float32 [B, D] (the class scores before
the re-scoring, sorted with the rest).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from yolact_torch.config import YolactConfig
from plugins.fast_nms import onnx_function as fast_nms_function
from plugins.mask_assembly import onnx_function as mask_assembly_function
from plugins.onnx_model import DECODED_HEAD_NAMES, add_functions
from runtime.contract import BOX_SCORES, POSTPROCESS_OUTPUTS

# The function's output det_indices feeds MaskAssembly only; it is not a graph output.
_DET_INDICES = 'det_indices'


def _output_dims(model: onnx.ModelProto, name: str) -> list:
    value = next(o for o in model.graph.output if o.name == name)
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _rescoring_nodes(model: onnx.ModelProto, maskiou_net: nn.Module, *, scores: str, classes: str, masks: str,
                     output: str, max_dets: int, proto_hw) -> list[onnx.NodeProto]:
    """yolact_torch.postprocess.rescore in standard ops, its weights added to `model`'s initialisers:
    masks [B, D, Hp, Wp] -> [B*D, 1, Hp, Wp] -> maskiou_net's Conv + Relu layers -> ReduceMax over
    the grid -> [B, D, K]; the entry of each row's class (classes int32 [B, D]) times scores [B, D]
    -> `output` float32 [B, D]. Padding rows have score 0 and stay 0; the rows keep their order."""
    nodes, value = [], 'maskiou/input'
    nodes.append(helper.make_node('Reshape', [masks, _constant(model, 'maskiou/input_shape', [-1, 1, *proto_hw])],
                                  [value]))
    for index, layer in enumerate(maskiou_net.maskiou_net):
        if isinstance(layer, nn.Conv2d):
            weight, bias = (f'maskiou_net.maskiou_net.{index}.{name}' for name in ('weight', 'bias'))
            model.graph.initializer.extend([numpy_helper.from_array(layer.weight.detach().cpu().numpy(), weight),
                                            numpy_helper.from_array(layer.bias.detach().cpu().numpy(), bias)])
            nodes.append(helper.make_node('Conv', [value, weight, bias], [f'maskiou/conv{index}'],
                                          kernel_shape=list(layer.kernel_size), strides=list(layer.stride)))
            value = f'maskiou/conv{index}'
        else:  # the ReLU after every conv
            nodes.append(helper.make_node('Relu', [value], [f'maskiou/relu{index}']))
            value = f'maskiou/relu{index}'
    num_classes = maskiou_net.maskiou_net[-2].out_channels
    nodes += [
        helper.make_node('ReduceMax', [value, _constant(model, 'maskiou/grid_axes', [2, 3])], ['maskiou/max'],
                         keepdims=0),
        helper.make_node('Reshape', ['maskiou/max', _constant(model, 'maskiou/per_detection', [-1, max_dets, num_classes])],
                         ['maskiou/iou']),                                                        # [B, D, K]
        helper.make_node('Cast', [classes], ['maskiou/classes'], to=TensorProto.INT64),
        helper.make_node('Unsqueeze', ['maskiou/classes', _constant(model, 'maskiou/last_axis', [2])],
                         ['maskiou/class_index']),
        helper.make_node('GatherElements', ['maskiou/iou', 'maskiou/class_index'], ['maskiou/class_iou'], axis=2),
        helper.make_node('Squeeze', ['maskiou/class_iou', 'maskiou/last_axis'], ['maskiou/predicted_iou']),
        helper.make_node('Mul', [scores, 'maskiou/predicted_iou'], [output]),
    ]
    return nodes


def _sorting_nodes(model: onnx.ModelProto, *, key: str, num_dets: str, values: dict[str, str],
                   max_dets: int) -> list[onnx.NodeProto]:
    """The detections stable-sorted by `key` (float32 [B, D]), descending, as torch.sort(stable=True):
    ties keep their row order, and the padding rows (past num_dets int32 [B]) stay at the end.
    values: {input: output} names of the per-detection tensors ([B, D, ...]) to permute alike.

    Each row's rank is counted (the rows with a higher key, plus the earlier rows with an equal one)
    rather than left to TopK's tie break, which ONNX defines (lower index first) but TensorRT does
    not document: the ranks are distinct, so the TopK over them has no ties to break. D^2
    comparisons per image (10^4 at D = 100) cost next to nothing."""
    model.graph.initializer.extend([
        numpy_helper.from_array(np.arange(max_dets, dtype=np.int32), 'sort/position'),     # [D]
        numpy_helper.from_array(np.array(-np.inf, np.float32), 'sort/minus_inf')])
    axis_1, axis_2 = _constant(model, 'sort/axis_1', [1]), _constant(model, 'sort/axis_2', [2])
    nodes = [
        helper.make_node('Unsqueeze', [num_dets, axis_1], ['sort/num_dets']),                        # [B, 1]
        helper.make_node('Less', ['sort/position', 'sort/num_dets'], ['sort/is_detection']),         # [B, D]
        # Padding below every detection whatever its score.
        helper.make_node('Where', ['sort/is_detection', key, 'sort/minus_inf'], ['sort/key']),
        # Entry [b, i, j] compares row i (key_i [B, D, 1]) with row j (key_j [B, 1, D]).
        helper.make_node('Unsqueeze', ['sort/key', axis_2], ['sort/key_i']),
        helper.make_node('Unsqueeze', ['sort/key', axis_1], ['sort/key_j']),
        helper.make_node('Greater', ['sort/key_j', 'sort/key_i'], ['sort/higher']),                  # [B, D, D]
        helper.make_node('Equal', ['sort/key_j', 'sort/key_i'], ['sort/equal']),
        helper.make_node('Unsqueeze', ['sort/position', axis_1], ['sort/position_i']),               # [D, 1]
        helper.make_node('Less', ['sort/position', 'sort/position_i'], ['sort/earlier']),            # [D, D]: j < i
        helper.make_node('And', ['sort/equal', 'sort/earlier'], ['sort/tied_earlier']),
        helper.make_node('Or', ['sort/higher', 'sort/tied_earlier'], ['sort/ahead']),
        # float 0/1, not bool or uint8, for TensorRT's ReduceSum; exact up to 2^24 rows.
        helper.make_node('Cast', ['sort/ahead'], ['sort/ahead_count'], to=TensorProto.FLOAT),
        helper.make_node('ReduceSum', ['sort/ahead_count', axis_2], ['sort/rank'], keepdims=0),      # [B, D]
        helper.make_node('TopK', ['sort/rank', _constant(model, 'sort/k', [max_dets])],
                         ['sort/ranks', 'sort/order'], axis=1, largest=0, sorted=1),                 # [B, D]
        helper.make_node('Unsqueeze', ['sort/order', axis_2], ['sort/gather_rows']),                 # [B, D, 1]
    ]
    nodes += [helper.make_node('GatherND', [value, 'sort/gather_rows'], [output], batch_dims=1)
              for value, output in values.items()]
    return nodes


def _constant(model: onnx.ModelProto, name: str, values: list[int]) -> str:
    """An int64 initialiser `name` holding `values`; returns its name."""
    model.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    return name


def append_postprocess(model: onnx.ModelProto, cfg: YolactConfig, *, cross_class: bool,
                       max_dets: int, maskiou_net: nn.Module | None = None) -> onnx.ModelProto:
    """`model` (outputs DECODED_HEAD_NAMES) with FastNMS and MaskAssembly appended, its outputs
    replaced by the contract's; thresholds and top-k from `cfg`. With a maskiou_net (YOLACT++'s
    yolact_torch.maskiou.MaskIoUNet) the scores are re-scored by it, the detections stable-sorted
    by the re-scored score, and the scores before the re-scoring become the extra output BOX_SCORES
    (yolact_torch.postprocess.detect). Modifies and returns `model`."""
    boxes, scores, coef, proto = DECODED_HEAD_NAMES
    num_dets, det_boxes, det_scores, det_classes, masks = POSTPROCESS_OUTPUTS
    batch = _output_dims(model, boxes)[0]
    proto_h, proto_w = _output_dims(model, proto)[1:3]

    # YOLACT++: Fast NMS and MaskAssembly write the unsorted detections the sort permutes into the
    # contract's outputs (value names unsorted/*).
    unsorted = {name: name if maskiou_net is None else f'unsorted/{name}'
                for name in (det_boxes, det_scores, det_classes, masks)}
    nms = fast_nms_function.make_node(
        [boxes, scores], [num_dets, unsorted[det_boxes], unsorted[det_scores], unsorted[det_classes], _DET_INDICES],
        conf_thresh=cfg.conf_thresh, iou_thresh=cfg.nms_thresh, top_k=cfg.nms_top_k,
        max_dets=max_dets, cross_class=cross_class)
    assembly = mask_assembly_function.make_node(
        [proto, coef, _DET_INDICES, unsorted[det_boxes], num_dets], [unsorted[masks]], crop_padding=cfg.crop_padding)
    model.graph.node.extend([nms, assembly])
    if maskiou_net is not None:
        rescored = 'maskiou/scores'
        model.graph.node.extend(_rescoring_nodes(model, maskiou_net, scores=unsorted[det_scores],
                                                 classes=unsorted[det_classes], masks=unsorted[masks],
                                                 output=rescored, max_dets=max_dets, proto_hw=(proto_h, proto_w)))
        # Fast NMS's scores, the class scores, go through the same permutation as BOX_SCORES.
        values = {unsorted[det_boxes]: det_boxes, rescored: det_scores, unsorted[det_classes]: det_classes,
                  unsorted[masks]: masks, unsorted[det_scores]: BOX_SCORES}
        model.graph.node.extend(_sorting_nodes(model, key=rescored, num_dets=num_dets, values=values,
                                               max_dets=max_dets))
    add_functions(model)  # the function bodies at the model's opset, and the yolact domain's import

    del model.graph.output[:]
    model.graph.output.extend([
        helper.make_tensor_value_info(num_dets, TensorProto.INT32, [batch]),
        helper.make_tensor_value_info(det_boxes, TensorProto.FLOAT, [batch, max_dets, 4]),
        helper.make_tensor_value_info(det_scores, TensorProto.FLOAT, [batch, max_dets]),
        helper.make_tensor_value_info(det_classes, TensorProto.INT32, [batch, max_dets]),
        helper.make_tensor_value_info(masks, TensorProto.FLOAT, [batch, max_dets, proto_h, proto_w]),
    ])
    if maskiou_net is not None:
        model.graph.output.append(helper.make_tensor_value_info(BOX_SCORES, TensorProto.FLOAT, [batch, max_dets]))
    return model


def postprocess_model(cfg: YolactConfig, *, num_priors: int, mask_dim: int, proto_hw: tuple[int, int],
                      cross_class: bool = False, max_dets: int | None = None, maskiou_net: nn.Module | None = None,
                      opset: int = 19) -> onnx.ModelProto:
    """The post-processing alone as a model: inputs DECODED_HEAD_NAMES (decoded_boxes float32
    [B, P, 4], class_scores float32 [B, P, K], coef float32 [B, P, M], proto float32 [B, Hp, Wp, M]),
    outputs the contract's; with a maskiou_net, YOLACT++'s re-scoring and sort too
    (append_postprocess, the nodes the export appends). The benchmark times the ops with it, apart
    from the network."""
    max_dets = cfg.max_num_detections if max_dets is None else int(max_dets)
    boxes, scores, coef, proto = DECODED_HEAD_NAMES
    shapes = {boxes: ['batch', num_priors, 4], scores: ['batch', num_priors, cfg.num_classes - 1],
              coef: ['batch', num_priors, mask_dim], proto: ['batch', *proto_hw, mask_dim]}
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    # The inputs stand as outputs until append_postprocess replaces them with the contract's.
    graph = helper.make_graph([], 'yolact_postprocess', values, values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
    return append_postprocess(model, cfg, cross_class=cross_class, max_dets=max_dets, maskiou_net=maskiou_net)
