"""The `yolact::DeformConv2d` ONNX function: DCNv2's modulated deformable convolution as a body of
standard ONNX ops, and the node that calls it.

onnxruntime (which has no kernel for ONNX's own DeformConv) runs the body, and so does TensorRT
when the plugin is not registered; TensorRT's ONNX parser maps the node to the
`yolact::DeformConv2d` plugin through its `plugin_namespace` and `plugin_version` attributes. The
body equals plugins/deform_conv/reference.py within float32 rounding (the sampling coordinates
make one round trip through GridSample's normalised grid).

Inputs: x float/float16 [B, C, H, W]; offset [B, 2*G*kh*kw, Ho, Wo] ((dy, dx) per deformable group
and kernel position, input pixels); mask [B, G*kh*kw, Ho, Wo]; weight [Cout, C, kh, kw]; bias [Cout].
Output: y [B, Cout, Ho, Wo] in x's float type. Ho and Wo are read from offset's shape. Every
dimension may be dynamic.
Attributes: stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, deformable_groups (ints).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from plugins import DEFORM_CONV_OP, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.deform_conv.reference import pair
from plugins.onnx_builder import FunctionBuilder

INPUTS = ['x', 'offset', 'mask', 'weight', 'bias']
OUTPUTS = ['y']
CONV_ATTRIBUTES = ['stride_h', 'stride_w', 'pad_h', 'pad_w', 'dilation_h', 'dilation_w', 'deformable_groups']
ATTRIBUTES = CONV_ATTRIBUTES + ['plugin_namespace', 'plugin_version']


def make_function(opset: int = 19) -> onnx.FunctionProto:
    """The FunctionProto of `yolact::DeformConv2d`, importing the default domain at `opset` (18..22).

    The bilinear sampling is GridSample (zeros padding, align_corners=0), which is DCNv2's rule: a
    corner outside the image counts 0, and a sample with h <= -1 or h >= H (w alike) has no corner
    inside, so it is 0. The pixel coordinate p along an axis of length n goes in as (2p + 1) / n - 1,
    which GridSample maps back to p; unlike align_corners=1 it needs no n - 1 > 0.
    """
    f = FunctionBuilder(DOMAIN, DEFORM_CONV_OP, INPUTS, OUTPUTS, ATTRIBUTES, opset, __doc__)
    x, offset, mask, weight, bias = (f.op('Cast', name, to=TensorProto.FLOAT) for name in INPUTS)
    attr = {name: f.attr_scalar(name, AttributeProto.INT) for name in CONV_ATTRIBUTES}
    zero, one = f.const(0), f.const(1)
    one_f, two_f = f.const(1.0, TensorProto.FLOAT), f.const(2.0, TensorProto.FLOAT)

    x_shape, weight_shape, offset_shape = f.op('Shape', x), f.op('Shape', weight), f.op('Shape', offset)
    height, width = f.op('Gather', x_shape, f.const(2)), f.op('Gather', x_shape, f.const(3))
    kernel_h, kernel_w = f.op('Gather', weight_shape, f.const(2)), f.op('Gather', weight_shape, f.const(3))
    out_h, out_w = f.op('Gather', offset_shape, f.const(2)), f.op('Gather', offset_shape, f.const(3))
    groups = attr['deformable_groups']

    def vec(scalar: str) -> str:
        """A 0-d int64 as a 1-element shape piece for Concat."""
        return f.op('Reshape', scalar, f.const([1]))

    # Sampling positions, integer part: tap * dilation + out * stride - pad, as [kh, 1, Ho, 1] (rows)
    # and [1, kw, 1, Wo] (columns), i.e. broadcastable to (tap row i, tap column j, y, x).
    def base(kernel: str, out: str, axis: str, taps_shape: list[int], out_shape: list[int]) -> str:
        taps = f.op('Mul', f.op('Range', zero, kernel, one), attr[f'dilation_{axis}'])
        outs = f.op('Sub', f.op('Mul', f.op('Range', zero, out, one), attr[f'stride_{axis}']), attr[f'pad_{axis}'])
        grid = f.op('Add', f.op('Reshape', taps, f.const(taps_shape)), f.op('Reshape', outs, f.const(out_shape)))
        return f.op('Cast', grid, to=TensorProto.FLOAT)

    base_h = base(kernel_h, out_h, 'h', [-1, 1, 1, 1], [1, 1, -1, 1])  # [kh, 1, Ho, 1]
    base_w = base(kernel_w, out_w, 'w', [1, -1, 1, 1], [1, 1, 1, -1])  # [1, kw, 1, Wo]

    # offset [B, 2GK, Ho, Wo] -> [B, G, kh, kw, 2, Ho, Wo]: channel g*2K + 2k is dy, + 1 is dx.
    out_hw = f.op('Slice', offset_shape, f.const([2]), f.const([4]))
    pairs = f.op('Reshape', offset, f.op('Concat', f.const([0]), vec(groups), vec(kernel_h), vec(kernel_w),
                                         f.const([2]), out_hw, axis=0))
    h = f.op('Add', base_h, f.op('Gather', pairs, zero, axis=4))  # [B, G, kh, kw, Ho, Wo]
    w = f.op('Add', base_w, f.op('Gather', pairs, one, axis=4))

    def normalised(position: str, size: str) -> str:
        size_f = f.op('Cast', size, to=TensorProto.FLOAT)
        return f.op('Sub', f.op('Div', f.op('Add', f.op('Mul', position, two_f), one_f), size_f), one_f)

    last = f.const([-1])
    grid = f.op('Concat', f.op('Unsqueeze', normalised(w, width), last), f.op('Unsqueeze', normalised(h, height), last),
                axis=-1)  # [B, G, kh, kw, Ho, Wo, 2] as (x, y)
    num_taps = f.op('Mul', kernel_h, kernel_w)
    taps = vec(num_taps)
    grid = f.op('Reshape', grid, f.op('Concat', last, vec(f.op('Mul', num_taps, out_h)), vec(out_w), f.const([2]),
                                      axis=0))  # [B*G, K*Ho, Wo, 2]

    # Sample each deformable group's channels at its grid: [B*G, C/G, H, W] -> [B*G, C/G, K*Ho, Wo].
    group_channels = vec(f.op('Div', f.op('Gather', x_shape, one), groups))
    images = f.op('Reshape', x, f.op('Concat', last, group_channels, f.op('Slice', x_shape, f.const([2]), f.const([4])),
                                     axis=0))
    mode = 'bilinear' if opset < 20 else 'linear'  # GridSample-20 renamed the mode
    samples = f.op('GridSample', images, grid, mode=mode, padding_mode='zeros', align_corners=0)

    # Modulate: samples [B, G, C/G, K, Ho*Wo] * mask [B, G, 1, K, Ho*Wo].
    pixels = vec(f.op('Mul', out_h, out_w))
    samples = f.op('Reshape', samples, f.op('Concat', last, vec(groups), group_channels, taps, pixels, axis=0))
    mask = f.op('Reshape', mask, f.op('Concat', f.const([0]), vec(groups), f.const([1]), taps, pixels, axis=0))
    columns = f.op('Reshape', f.op('Mul', samples, mask), f.op('Concat', f.const([0, -1]), pixels, axis=0))
    # columns [B, C*K, Ho*Wo], row c*K + k: the order of weight's [C, kh, kw] flattened

    # The convolution proper: weight [Cout, C*K] @ columns [B, C*K, Ho*Wo], plus bias.
    product = f.op('MatMul', f.op('Reshape', weight, f.const([0, -1])), columns)  # [B, Cout, Ho*Wo]
    y = f.op('CastLike', f.op('Add', product, f.op('Unsqueeze', bias, f.const([1]))), 'x')
    f.op('Reshape', y, f.op('Concat', f.const([0, 0]), out_hw, axis=0), outputs=['y'])
    return f.build()


def conv_attributes(*, stride, padding, dilation, deformable_groups: int) -> dict:
    """The node's convolution attributes from ints or (h, w) pairs, checked."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, 'stride'), pair(padding, 'padding'), pair(dilation, 'dilation')
    if min(sh, sw, dh, dw, deformable_groups) < 1 or min(ph, pw) < 0:
        raise ValueError(f'DeformConv2d needs stride, dilation and deformable_groups >= 1 and padding >= 0; got '
                         f'stride {stride}, padding {padding}, dilation {dilation}, '
                         f'deformable_groups {deformable_groups}')
    return dict(stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, dilation_h=dh, dilation_w=dw,
                deformable_groups=int(deformable_groups))


def make_node(inputs: list[str], outputs: list[str], *, stride=1, padding=0, dilation=1, deformable_groups: int = 1,
              name: str = 'deform_conv') -> onnx.NodeProto:
    """A `yolact::DeformConv2d` node with every attribute the function body and the plugin read.

    inputs: [x, offset, mask, weight, bias] value names; outputs: [y]. stride, padding, dilation:
    int or (h, w), as DCNv2's DCN module takes them.
    """
    if len(inputs) != len(INPUTS) or len(outputs) != len(OUTPUTS):
        raise ValueError(f'DeformConv2d takes inputs {INPUTS} and outputs {OUTPUTS}; got {inputs} -> {outputs}')
    attributes = conv_attributes(stride=stride, padding=padding, dilation=dilation,
                                 deformable_groups=deformable_groups)
    return helper.make_node(DEFORM_CONV_OP, inputs, outputs, name=name, domain=DOMAIN, **attributes,
                            plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION)
