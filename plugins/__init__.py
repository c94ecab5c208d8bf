"""YOLACT's post-processing as custom ops: Fast NMS and mask assembly.

One folder per op (`fast_nms/`, `mask_assembly/`), each holding the same maths in four forms:
`reference.py` (numpy, the definition), `kernels.py` (Triton), `trt_plugin.py` (TensorRT Python
plugin) and `onnx_function.py` (the ONNX function body the exporter puts in the graph).
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
