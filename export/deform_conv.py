"""YOLACT++'s deformable convolutions in the exported graph: each `torch.ops.yolact.deform_conv2d`
(yolact_torch/deform_conv.py) becomes one `yolact::DeformConv2d` node, and the model gets that op's
function body (plugins/deform_conv/onnx_function.py).

The dynamo exporter's custom translation table does it (`TRANSLATIONS`, passed to
torch.onnx.export): the op is a torch custom op, so torch.export keeps it as one call, and the
translation emits the node with the attributes the function body and the TensorRT plugin read.
Tracing the op's torch body instead would inline a GridSample subgraph that TensorRT's parser
cannot map to the plugin; rewriting a marker op after export would need a second, hand-kept
description of the op's inputs.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx import helper
from onnx.defs import OpSchema

import yolact_torch.deform_conv  # noqa: F401 - registers torch.ops.yolact.deform_conv2d
from plugins import DEFORM_CONV_OP, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.deform_conv import onnx_function
from plugins.onnx_model import DOMAIN_VERSION



def _schema() -> OpSchema:
    """The node's signature, which onnxscript needs to record a call (not registered globally)."""
    attribute_types = dict.fromkeys(onnx_function.CONV_ATTRIBUTES, OpSchema.AttrType.INT)
    attribute_types.update(plugin_namespace=OpSchema.AttrType.STRING, plugin_version=OpSchema.AttrType.STRING)
    return OpSchema(
        DEFORM_CONV_OP, DOMAIN, DOMAIN_VERSION,
        inputs=[OpSchema.FormalParameter(name, 'T') for name in onnx_function.INPUTS],
        outputs=[OpSchema.FormalParameter(name, 'T') for name in onnx_function.OUTPUTS],
        type_constraints=[('T', ['tensor(float)', 'tensor(float16)'], 'float types')],
        attributes=[OpSchema.Attribute(name, kind, '') for name, kind in attribute_types.items()])


_DEFORM_CONV = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION), DEFORM_CONV_OP, _schema())


def _deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, deformable_groups):
    attributes = onnx_function.conv_attributes(stride=stride, padding=padding, dilation=dilation,
                                               deformable_groups=deformable_groups)
    return _DEFORM_CONV(x, offset, mask, weight, bias, **attributes, plugin_namespace=PLUGIN_NAMESPACE,
                        plugin_version=PLUGIN_VERSION)


TRANSLATIONS = {torch.ops.yolact.deform_conv2d.default: _deform_conv2d}


def add_deform_conv_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give `model` the `yolact::DeformConv2d` function body (at its default-domain opset) and the
    `yolact` opset import when a node calls it; otherwise leave it as it is. Modifies and returns it."""
    if not any(n.domain == DOMAIN and n.op_type == DEFORM_CONV_OP for n in model.graph.node):
        return model
    opset = next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))
    model.functions.append(onnx_function.make_function(opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model
