"""The `yolact::MaskAssembly` ONNX function: its body in standard ONNX ops, and the node that calls it.

The exporter takes both from here (one source of truth). onnxruntime runs the body; the TensorRT
ONNX parser maps the node to the `yolact::MaskAssembly` plugin through its `plugin_namespace` and
`plugin_version` attributes. The body equals plugins/mask_assembly/reference.py (masks within
float32 rounding of the prototype product; the crop is exact).

Inputs: proto float/float16 [B, Hp, Wp, M] (NHWC); coef float/float16 [B, P, M]; det_indices int32
[B, D]; det_boxes float/float16 [B, D, 4] xyxy relative; num_dets int32 [B].
Output: masks [B, D, Hp, Wp] in proto's float type, on the prototype grid, zero outside the padded
box and for rows d >= num_dets. Batch B may be dynamic.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from plugins import DOMAIN, MASK_ASSEMBLY_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.onnx_builder import FunctionBuilder

INPUTS = ['proto', 'coef', 'det_indices', 'det_boxes', 'num_dets']
OUTPUTS = ['masks']
ATTRIBUTES = ['crop_padding', 'plugin_namespace', 'plugin_version']


def make_function(opset: int = 19) -> onnx.FunctionProto:
    """The FunctionProto of `yolact::MaskAssembly`, importing the default domain at `opset` (18..22)."""
    f = FunctionBuilder(DOMAIN, MASK_ASSEMBLY_OP, INPUTS, OUTPUTS, ATTRIBUTES, opset, __doc__)
    proto = f.op('Cast', 'proto', to=TensorProto.FLOAT)
    coef = f.op('Cast', 'coef', to=TensorProto.FLOAT)
    boxes = f.op('Cast', 'det_boxes', to=TensorProto.FLOAT)
    indices = f.op('Cast', 'det_indices', to=TensorProto.INT64)
    num_dets = f.op('Cast', 'num_dets', to=TensorProto.INT64)
    padding = f.op('Cast', f.attr_scalar('crop_padding', AttributeProto.INT), to=TensorProto.FLOAT)
    zero, one, zero_f = f.const(0), f.const(1), f.const(0.0, TensorProto.FLOAT)

    # Prototype product: [B, D, M] (the detections' coefficients) @ [B, M, Hp*Wp], then sigmoid.
    # Transposing the prototypes (M = 32 wide) rather than the [B, Hp*Wp, D] product moves ~3x less
    # data, and onnxruntime folds this Transpose into the MatMul (transB) so none is materialised.
    shape = f.op('Shape', proto)  # [B, Hp, Wp, M]
    grid_hw = f.op('Slice', shape, f.const([1]), f.const([3]))
    det_coef = f.op('GatherND', coef, f.op('Unsqueeze', indices, f.const([2])), batch_dims=1)  # [B, D, M]
    flat_proto = f.op('Reshape', proto, f.op('Concat', f.const([0, -1]), f.op('Slice', shape, f.const([3]), f.const([4])), axis=0))
    logits = f.op('MatMul', det_coef, f.op('Transpose', flat_proto, perm=[0, 2, 1]))  # [B, D, Hp*Wp]
    logits = f.op('Reshape', logits, f.op('Concat', f.const([0, 0]), grid_hw, axis=0))
    masks = f.op('Sigmoid', logits)  # [B, D, Hp, Wp]

    # Crop: pixel i is inside iff lo <= i < hi, lo = max(min * size - padding, 0),
    # hi = min(max * size + padding, size), on each axis; only the first num_dets rows are detections.
    def inside(axis: int, size: str) -> str:
        first, second = (f.op('Gather', boxes, f.const(axis + c), axis=2) for c in (0, 2))  # [B, D]
        size_f = f.op('Cast', size, to=TensorProto.FLOAT)
        lo = f.op('Max', f.op('Sub', f.op('Mul', f.op('Min', first, second), size_f), padding), zero_f)
        hi = f.op('Min', f.op('Add', f.op('Mul', f.op('Max', first, second), size_f), padding), size_f)
        pixel = f.op('Cast', f.op('Range', zero, size, one), to=TensorProto.FLOAT)
        lo, hi = (f.op('Unsqueeze', v, f.const([2])) for v in (lo, hi))
        return f.op('And', f.op('GreaterOrEqual', pixel, lo), f.op('Less', pixel, hi))  # [B, D, size] bool

    inside_x = inside(0, f.op('Gather', shape, f.const(2)))
    inside_y = inside(1, f.op('Gather', shape, f.const(1)))
    num_rows = f.op('Gather', f.op('Shape', indices), one)
    is_detection = f.op('Less', f.op('Range', zero, num_rows, one), f.op('Unsqueeze', num_dets, f.const([1])))  # [B, D]
    # Zeroing by two broadcast multiplications with 0/1 factors ([B, D, Hp, 1] and [B, D, 1, Wp])
    # instead of a Where over [B, D, Hp, Wp] (several times slower in onnxruntime); exact, because a
    # sigmoid is finite and >= 0, so m * 1 = m and m * 0 = +0.
    keep_y = f.op('Cast', f.op('And', inside_y, f.op('Unsqueeze', is_detection, f.const([2]))), to=TensorProto.FLOAT)
    keep_x = f.op('Cast', inside_x, to=TensorProto.FLOAT)
    # The cast to the output type comes before the last op: a node that writes a graph output cannot
    # be removed, so a float32 -> float32 cast there would copy [B, D, Hp, Wp] once more.
    masks = f.op('CastLike', f.op('Mul', masks, f.op('Unsqueeze', keep_y, f.const([3]))), 'proto')
    f.op('Mul', masks, f.op('CastLike', f.op('Unsqueeze', keep_x, f.const([2])), 'proto'), outputs=['masks'])
    return f.build()


def make_node(inputs: list[str], outputs: list[str], *, crop_padding: int, name: str = 'mask_assembly') -> onnx.NodeProto:
    """A `yolact::MaskAssembly` node with every attribute the function body and the plugin read.

    inputs: [proto, coef, det_indices, det_boxes, num_dets] value names; outputs: [masks].
    """
    if len(inputs) != len(INPUTS) or len(outputs) != len(OUTPUTS):
        raise ValueError(f'MaskAssembly takes inputs {INPUTS} and outputs {OUTPUTS}; got {inputs} -> {outputs}')
    if int(crop_padding) < 0:
        raise ValueError(f'MaskAssembly needs crop_padding >= 0 prototype pixels; got {crop_padding}')
    return helper.make_node(
        MASK_ASSEMBLY_OP, inputs, outputs, name=name, domain=DOMAIN, crop_padding=int(crop_padding),
        plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
