"""The TensorRT plugin `yolact::DeformConv2d` (version 1): a TensorRT Python plugin whose
ahead-of-time implementation is the Triton kernel of plugins/deform_conv/kernels.py, compiled to
PTX when the engine is built. The engine carries the PTX, so inference runs no Python.

Importing this module registers the plugin (TensorRT >= 10.8 with `tensorrt.plugin`); use
plugins.register_tensorrt_plugins(). Fields: the ONNX node's stride_h, stride_w, pad_h, pad_w,
dilation_h, dilation_w, deformable_groups (plugins/deform_conv/onnx_function.py). Inputs x
[B, C, H, W], offset [B, 2*G*kh*kw, Ho, Wo], mask [B, G*kh*kw, Ho, Wo], weight [Cout, C, kh, kw],
bias [Cout] (all float32 or all float16; C, Cout, kh and kw fixed at build time); output y
[B, Cout, Ho, Wo] like x.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads these annotations as types.
from typing import List, Tuple, Union

import tensorrt.plugin as trtp
import triton

from plugins import DEFORM_CONV_OP, DOMAIN
from plugins.deform_conv.kernels import DeformConvKernelConfig, deform_conv_kernel, signature
from plugins.trt_common import build_arch, constant_dim, float_type, launch_params
from plugins.triton_compile import compile_aot

PLUGIN_ID = f'{DOMAIN}::{DEFORM_CONV_OP}'


@trtp.register(PLUGIN_ID)
def deform_conv_shapes(x: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
                       bias: trtp.TensorDesc, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                       dilation_w: int, deformable_groups: int) -> trtp.TensorDesc:
    """y [B, Cout, Ho, Wo] of x's type; Ho and Wo are offset's, as in the function body."""
    return trtp.from_shape_expr((x.shape_expr[0], weight.shape_expr[0], offset.shape_expr[2], offset.shape_expr[3]),
                                dtype=x.dtype)


@trtp.autotune(PLUGIN_ID)
def deform_conv_formats(x: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
                        bias: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    # inputs x, offset, mask, weight, bias; output y: all one float type
    return [trtp.AutoTuneCombination('FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16')]


@trtp.aot_impl(PLUGIN_ID)
def deform_conv_kernel_for_engine(
        x: trtp.TensorDesc, offset: trtp.TensorDesc, mask: trtp.TensorDesc, weight: trtp.TensorDesc,
        bias: trtp.TensorDesc, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
        deformable_groups: int, outputs: Tuple[trtp.TensorDesc], tactic: int
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    """Grid (B, Cout blocks, output pixel blocks); H, W, Ho and Wo as the kernel's int32 arguments."""
    config = DeformConvKernelConfig(
        constant_dim(x, 1, 'the input channel count C of DeformConv2d'),
        constant_dim(weight, 0, 'the output channel count Cout of DeformConv2d'),
        (constant_dim(weight, 2, 'the kernel height of DeformConv2d'),
         constant_dim(weight, 3, 'the kernel width of DeformConv2d')),
        (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w), deformable_groups)
    kernel = compile_aot(deform_conv_kernel, signature(float_type(x)), config.constexprs(), arch=build_arch(),
                         num_warps=config.num_warps)
    out_h, out_w = offset.shape_expr[2], offset.shape_expr[3]
    launch = launch_params(kernel, x.shape_expr[0], triton.cdiv(config.out_channels, config.block_co),
                           trtp.cdiv(out_h * out_w, config.block_l))
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(x.shape_expr[2]), trtp.SymInt32(x.shape_expr[3]),
                                           trtp.SymInt32(out_h), trtp.SymInt32(out_w)])
    return kernel.name.encode(), kernel.ptx.encode(), launch, scalars
