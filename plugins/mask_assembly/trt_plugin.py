"""The TensorRT plugin `yolact::MaskAssembly` (version 1): a TensorRT Python plugin whose
ahead-of-time implementation is the Triton kernel of plugins/mask_assembly/kernels.py, compiled to
PTX when the engine is built. The engine carries the PTX, so inference runs no Python.

Importing this module registers the plugin (TensorRT >= 10.8 with `tensorrt.plugin`); use
plugins.register_tensorrt_plugins(). Field: the ONNX node's crop_padding. Inputs proto
[B, Hp, Wp, M], coef [B, P, M], det_indices int32 [B, D], det_boxes [B, D, 4], num_dets int32 [B]
(float tensors all float32 or all float16; M and D fixed at build time); output masks
[B, D, Hp, Wp] like proto.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads these annotations as types.
from typing import List, Tuple, Union

import tensorrt.plugin as trtp
import triton

from plugins import DOMAIN, MASK_ASSEMBLY_OP
from plugins.mask_assembly.kernels import MaskAssemblyKernelConfig, mask_assembly_kernel, signature
from plugins.trt_common import build_arch, constant_dim, float_type, launch_params
from plugins.triton_compile import compile_aot

PLUGIN_ID = f'{DOMAIN}::{MASK_ASSEMBLY_OP}'


@trtp.register(PLUGIN_ID)
def mask_assembly_shapes(proto: trtp.TensorDesc, coef: trtp.TensorDesc, det_indices: trtp.TensorDesc,
                         det_boxes: trtp.TensorDesc, num_dets: trtp.TensorDesc, crop_padding: int) -> trtp.TensorDesc:
    """masks [B, D, Hp, Wp] of proto's type."""
    return trtp.from_shape_expr((proto.shape_expr[0], det_indices.shape_expr[1], proto.shape_expr[1],
                                 proto.shape_expr[2]), dtype=proto.dtype)


@trtp.autotune(PLUGIN_ID)
def mask_assembly_formats(proto: trtp.TensorDesc, coef: trtp.TensorDesc, det_indices: trtp.TensorDesc,
                          det_boxes: trtp.TensorDesc, num_dets: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
                          ) -> List[trtp.AutoTuneCombination]:
    # inputs proto, coef, det_indices, det_boxes, num_dets; output masks
    return [trtp.AutoTuneCombination('FP32|FP16, FP32|FP16, INT32, FP32|FP16, INT32, FP32|FP16')]


@trtp.aot_impl(PLUGIN_ID)
def mask_assembly_kernel_for_engine(
        proto: trtp.TensorDesc, coef: trtp.TensorDesc, det_indices: trtp.TensorDesc, det_boxes: trtp.TensorDesc,
        num_dets: trtp.TensorDesc, crop_padding: int, outputs: Tuple[trtp.TensorDesc], tactic: int
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    """Grid (B, D blocks, pixel blocks); P, Hp and Wp as the kernel's int32 arguments."""
    config = MaskAssemblyKernelConfig(constant_dim(det_indices, 1, 'the detection count D of MaskAssembly'),
                                      constant_dim(proto, 3, 'the mask dimension M of MaskAssembly prototypes'),
                                      crop_padding)
    kernel = compile_aot(mask_assembly_kernel, signature(float_type(proto)), config.constexprs(), arch=build_arch(),
                         num_warps=config.num_warps)
    height, width = proto.shape_expr[1], proto.shape_expr[2]
    launch = launch_params(kernel, proto.shape_expr[0], triton.cdiv(config.max_dets, config.block_d),
                           trtp.cdiv(height * width, config.block_pix))
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(coef.shape_expr[1]), trtp.SymInt32(height),
                                           trtp.SymInt32(width)])
    return kernel.name.encode(), kernel.ptx.encode(), launch, scalars
