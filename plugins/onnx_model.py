"""Putting the post-processing functions into an ONNX model.

`add_functions(model)` is what the exporter calls after adding `yolact::FastNMS` /
`yolact::MaskAssembly` nodes (made by plugins.fast_nms.onnx_function.make_node and
plugins.mask_assembly.onnx_function.make_node). `nms_and_masks_model(...)` is the two ops alone, as
a model: used by the tests and by the plugin benchmark as the in-graph standard-op version.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from plugins import DOMAIN
from plugins.fast_nms import onnx_function as fast_nms_function
from plugins.mask_assembly import onnx_function as mask_function

# onnxruntime runs model-local functions from IR version 8; TensorRT's parser reads up to IR 10.
IR_VERSION = 10
DOMAIN_VERSION = 1
# The post-processing's inputs, the decoded head: boxes [B, P, 4] xyxy relative, class scores [B, P, K]
# (softmax, background excluded), mask coefficients [B, P, M], prototypes [B, Hp, Wp, M]. The exporter
# names the traced network's outputs so (export/postprocess_nodes.py).
DECODED_HEAD_NAMES = ('decoded_boxes', 'class_scores', 'coef', 'proto')


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add both FunctionProtos and the `yolact` opset import to `model` (in place; also returned).

    The functions import the default domain at the model's own opset. Functions already present
    under the same names are replaced, so calling this twice is harmless.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), None)
    if opset is None:
        raise ValueError('the model imports no default ONNX opset: export it with an opset (18..22) first')
    functions = [fast_nms_function.make_function(opset), mask_function.make_function(opset)]
    names = {(fn.domain, fn.name) for fn in functions}
    kept = [fn for fn in model.functions if (fn.domain, fn.name) not in names]
    del model.functions[:]
    model.functions.extend(kept + functions)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def nms_and_masks_model(*, conf_thresh: float, iou_thresh: float, top_k: int, max_dets: int, cross_class: bool,
                      crop_padding: int, float_type: int = TensorProto.FLOAT, opset: int = 19) -> onnx.ModelProto:
    """FastNMS followed by MaskAssembly as a model, every dimension but the last ones dynamic.

    Inputs: decoded_boxes [B, P, 4] xyxy relative; class_scores [B, P, K]; coef [B, P, M]; proto [B, Hp, Wp, M]
    (all `float_type`: TensorProto.FLOAT or FLOAT16). Outputs, the project's ONNX contract:
    num_dets int32 [B]; boxes [B, D, 4]; scores [B, D]; classes int32 [B, D]; masks [B, D, Hp, Wp]
    (float outputs in `float_type`), plus det_indices int32 [B, D].
    """
    boxes, scores, coef, proto = DECODED_HEAD_NAMES
    nms = fast_nms_function.make_node(
        [boxes, scores], ['num_dets', 'det_boxes', 'det_scores', 'det_classes', 'det_indices'],
        conf_thresh=conf_thresh, iou_thresh=iou_thresh, top_k=top_k, max_dets=max_dets, cross_class=cross_class)
    masks = mask_function.make_node([proto, coef, 'det_indices', 'det_boxes', 'num_dets'], ['masks'],
                                    crop_padding=crop_padding)
    rename = [helper.make_node('Identity', [src], [dst]) for src, dst in
              (('det_boxes', 'boxes'), ('det_scores', 'scores'), ('det_classes', 'classes'))]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [nms, masks, *rename], 'yolact_postprocess',
        [value(boxes, float_type, ['batch', 'priors', 4]),
         value(scores, float_type, ['batch', 'priors', 'classes']),
         value(coef, float_type, ['batch', 'priors', 'mask_dim']),
         value(proto, float_type, ['batch', 'proto_h', 'proto_w', 'mask_dim'])],
        [value('num_dets', TensorProto.INT32, ['batch']), value('boxes', float_type, ['batch', max_dets, 4]),
         value('scores', float_type, ['batch', max_dets]), value('classes', TensorProto.INT32, ['batch', max_dets]),
         value('masks', float_type, ['batch', max_dets, 'proto_h', 'proto_w']),
         value('det_indices', TensorProto.INT32, ['batch', max_dets])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
    model.ir_version = IR_VERSION
    return add_functions(model)
