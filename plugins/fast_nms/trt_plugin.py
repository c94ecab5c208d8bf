"""The TensorRT plugin `yolact::FastNMS` (version 1): a TensorRT Python plugin whose ahead-of-time
implementation is the Triton kernel of plugins/fast_nms/kernels.py, compiled to PTX when the engine
is built. The engine carries the PTX, so inference runs no Python.

Importing this module registers the plugin (TensorRT >= 10.8 with `tensorrt.plugin`); use
plugins.register_tensorrt_plugins(). Fields: the ONNX node's attributes conf_thresh, iou_thresh,
top_k, max_dets, cross_class (plugins/fast_nms/onnx_function.py). Inputs boxes [B, P, 4] and
scores [B, P, K] (float32 or float16, one type; K fixed at build time); outputs as the op.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads these annotations as types.
from typing import List, Tuple, Union

import tensorrt as trt
import tensorrt.plugin as trtp

from plugins import DOMAIN, FAST_NMS_OP
from plugins.fast_nms.kernels import FastNMSKernelConfig, fast_nms_kernel, signature
from plugins.trt_common import build_arch, constant_dim, float_type, launch_params
from plugins.triton_compile import compile_aot

PLUGIN_ID = f'{DOMAIN}::{FAST_NMS_OP}'


@trtp.register(PLUGIN_ID)
def fast_nms_shapes(boxes: trtp.TensorDesc, scores: trtp.TensorDesc, conf_thresh: float, iou_thresh: float,
                    top_k: int, max_dets: int, cross_class: int
                    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
    """num_dets int32 [B]; det_boxes [B, D, 4] and det_scores [B, D] like the inputs; det_classes
    and det_indices int32 [B, D]."""
    batch = boxes.shape_expr[0]
    return (trtp.from_shape_expr((batch,), dtype=trt.int32),
            trtp.from_shape_expr((batch, max_dets, 4), dtype=boxes.dtype),
            trtp.from_shape_expr((batch, max_dets), dtype=scores.dtype),
            trtp.from_shape_expr((batch, max_dets), dtype=trt.int32),
            trtp.from_shape_expr((batch, max_dets), dtype=trt.int32))


@trtp.autotune(PLUGIN_ID)
def fast_nms_formats(boxes: trtp.TensorDesc, scores: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
                     ) -> List[trtp.AutoTuneCombination]:
    # inputs boxes, scores; outputs num_dets, det_boxes, det_scores, det_classes, det_indices
    return [trtp.AutoTuneCombination('FP32|FP16, FP32|FP16, INT32, FP32|FP16, FP32|FP16, INT32, INT32')]


@trtp.aot_impl(PLUGIN_ID)
def fast_nms_kernel_for_engine(
        boxes: trtp.TensorDesc, scores: trtp.TensorDesc, conf_thresh: float, iou_thresh: float, top_k: int,
        max_dets: int, cross_class: int, outputs: Tuple[trtp.TensorDesc], tactic: int
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    """One program per image: grid (B,), the prior count P as the kernel's int32 argument."""
    config = FastNMSKernelConfig(conf_thresh, iou_thresh, top_k, max_dets, bool(cross_class),
                                 constant_dim(scores, 2, 'the class count K of FastNMS scores'))
    kernel = compile_aot(fast_nms_kernel, signature(float_type(boxes)), config.constexprs(), arch=build_arch(),
                         num_warps=config.num_warps)
    launch = launch_params(kernel, boxes.shape_expr[0])
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(boxes.shape_expr[1])])
    return kernel.name.encode(), kernel.ptx.encode(), launch, scalars
