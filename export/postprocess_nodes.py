"""Append YOLACT's post-processing to a traced network: the `yolact::FastNMS` and
`yolact::MaskAssembly` function nodes (bodies and nodes from plugins/*/onnx_function.py).

The traced network's outputs (names DECODED_HEAD_NAMES, shapes as export.graph.DecodedHead) become
the ops' inputs, and the graph's outputs become the model contract (README, "The model contract"):
num_dets int32 [B], boxes float32 [B, D, 4], scores float32 [B, D], classes int32 [B, D],
masks float32 [B, D, Hp, Wp].
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from model.config import YolactConfig
from plugins.fast_nms import onnx_function as fast_nms_function
from plugins.mask_assembly import onnx_function as mask_assembly_function
from plugins.onnx_model import DECODED_HEAD_NAMES, add_functions
from runtime.contract import POSTPROCESS_OUTPUTS

# The function's output det_indices feeds MaskAssembly only; it is not a graph output.
_DET_INDICES = 'det_indices'


def _output_dims(model: onnx.ModelProto, name: str) -> list:
    value = next(o for o in model.graph.output if o.name == name)
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def append_postprocess(model: onnx.ModelProto, cfg: YolactConfig, *, cross_class: bool,
                       max_dets: int) -> onnx.ModelProto:
    """`model` (outputs DECODED_HEAD_NAMES) with FastNMS and MaskAssembly appended, its outputs
    replaced by the contract's; thresholds and top-k from `cfg`. Modifies and returns `model`."""
    boxes, scores, coef, proto = DECODED_HEAD_NAMES
    num_dets, det_boxes, det_scores, det_classes, masks = POSTPROCESS_OUTPUTS
    batch = _output_dims(model, boxes)[0]
    proto_h, proto_w = _output_dims(model, proto)[1:3]

    nms = fast_nms_function.make_node(
        [boxes, scores], [num_dets, det_boxes, det_scores, det_classes, _DET_INDICES],
        conf_thresh=cfg.conf_thresh, iou_thresh=cfg.nms_thresh, top_k=cfg.nms_top_k,
        max_dets=max_dets, cross_class=cross_class)
    assembly = mask_assembly_function.make_node(
        [proto, coef, _DET_INDICES, det_boxes, num_dets], [masks], crop_padding=cfg.crop_padding)
    model.graph.node.extend([nms, assembly])
    add_functions(model)  # the function bodies at the model's opset, and the yolact domain's import

    del model.graph.output[:]
    model.graph.output.extend([
        helper.make_tensor_value_info(num_dets, TensorProto.INT32, [batch]),
        helper.make_tensor_value_info(det_boxes, TensorProto.FLOAT, [batch, max_dets, 4]),
        helper.make_tensor_value_info(det_scores, TensorProto.FLOAT, [batch, max_dets]),
        helper.make_tensor_value_info(det_classes, TensorProto.INT32, [batch, max_dets]),
        helper.make_tensor_value_info(masks, TensorProto.FLOAT, [batch, max_dets, proto_h, proto_w]),
    ])
    return model


def postprocess_model(cfg: YolactConfig, *, num_priors: int, mask_dim: int, proto_hw: tuple[int, int],
                      cross_class: bool = False, max_dets: int | None = None, opset: int = 19) -> onnx.ModelProto:
    """The post-processing alone as a model: inputs DECODED_HEAD_NAMES (decoded_boxes float32
    [B, P, 4], class_scores float32 [B, P, K], coef float32 [B, P, M], proto float32 [B, Hp, Wp, M]),
    outputs the contract's. The benchmark times the ops with it, apart from the network."""
    max_dets = cfg.max_num_detections if max_dets is None else int(max_dets)
    boxes, scores, coef, proto = DECODED_HEAD_NAMES
    shapes = {boxes: ['batch', num_priors, 4], scores: ['batch', num_priors, cfg.num_classes - 1],
              coef: ['batch', num_priors, mask_dim], proto: ['batch', *proto_hw, mask_dim]}
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]
    # The inputs stand as outputs until append_postprocess replaces them with the contract's.
    graph = helper.make_graph([], 'yolact_postprocess', values, values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
    return append_postprocess(model, cfg, cross_class=cross_class, max_dets=max_dets)
