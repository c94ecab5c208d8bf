"""YOLACT's custom ops: Fast NMS and mask assembly (post-processing), and YOLACT++'s modulated
deformable convolution (DCNv2).

One folder per op (`fast_nms/`, `mask_assembly/`, `deform_conv/`), each holding the same maths in
four forms: `reference.py` (numpy, the definition), `kernels.py` (Triton), `trt_plugin.py`
(TensorRT Python plugin) and `onnx_function.py` (the ONNX function body the exporter puts in the
graph).
See plugins/README.md for the API the exporter and the engine builder use.

This module stays light: importing it needs neither onnx, triton nor TensorRT.
"""

from __future__ import annotations

# The ONNX nodes' domain and the TensorRT plugin namespace/version they map to. The ONNX parser of
# TensorRT looks a custom node up as (op_type, plugin_version, plugin_namespace).
DOMAIN = 'yolact'
PLUGIN_NAMESPACE = 'yolact'
PLUGIN_VERSION = '1'
FAST_NMS_OP = 'FastNMS'
MASK_ASSEMBLY_OP = 'MaskAssembly'
# DCNv2's modulated deformable convolution (YOLACT++'s backbone). A name of its own, not ONNX's
# standard DeformConv (opset 19), which onnxruntime 1.24 has no kernel for.
DEFORM_CONV_OP = 'DeformConv2d'


def register_tensorrt_plugins() -> tuple[bool, str]:
    """Register `yolact::FastNMS`, `yolact::MaskAssembly` and `yolact::DeformConv2d` (version 1) with
    TensorRT's plugin registry, so the ONNX parser uses them instead of the nodes' function bodies.

    Returns (True, '') once registered (calling again is harmless), or (False, why not) when this
    host lacks what they need: TensorRT >= 10.8 with its `tensorrt.plugin` module (TensorRT-RTX has
    none) and Triton. Their kernels are compiled for the build GPU when an engine is built.
    """
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError as e:
        return False, (f'tensorrt.plugin is not importable ({e}): the yolact plugins need TensorRT >= 10.8 '
                       f'(pip install -e .[tensorrt]); engines then use the ONNX function bodies')
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f'triton is not importable ({e}): pip install -e .[plugins]'
    # Importing the plugin modules registers them (once per process).
    import plugins.fast_nms.trt_plugin  # noqa: F401
    import plugins.mask_assembly.trt_plugin  # noqa: F401
    import plugins.deform_conv.trt_plugin  # noqa: F401
    return True, ''
