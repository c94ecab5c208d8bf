"""FP16: the network's weights and activations in half precision, by modelopt's AutoCast.

TensorRT 10+ is strongly typed from the ONNX, so FP16 means FP16 tensors in the graph. AutoCast
converts node by node and keeps in FP32 any node whose inputs or outputs exceed FP16's safe range
on real data (it runs the calibration images through the model to see). The uint8 `images` input
and every network output keep their types (`keep_io_types`), so the post-processing, re-attached
afterwards (calib/graph.py), reads FP32 as before and runs in FP32.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from calib.graph import join_postprocess, producing_convs, split_postprocess
from runtime.contract import INPUT_NAME
from runtime.files import scratch_folder



def convert_fp16(model: onnx.ModelProto, images: np.ndarray, *, keep_sensitive: bool = False) -> onnx.ModelProto:
    """The FP16 version of `model`, an exported YOLACT ONNX model.

    images: uint8 [N, H, W, 3] BGR at the model's input size: AutoCast's reference data.
    keep_sensitive: keep the convolutions producing the prototypes and the mask coefficients FP32.
    """
    from modelopt.onnx.autocast import convert_to_mixed_precision

    split = split_postprocess(model)
    kept = producing_convs(split.network, split.mask_inputs) if keep_sensitive else []
    with scratch_folder('yolact-fp16-') as tmp:
        network_path = tmp / 'network.onnx'
        onnx.save(split.network, network_path)
        # AutoCast reads its reference inputs from an .npz keyed by input name.
        data_path = tmp / 'calibration.npz'
        np.savez(data_path, **{INPUT_NAME: images})
        network = convert_to_mixed_precision(
            str(network_path), low_precision_type='fp16', keep_io_types=True,
            nodes_to_exclude=[f'^{re.escape(name)}$' for name in kept] or None,
            calibration_data=str(data_path), providers=['cpu'])
    return join_postprocess(network, split, 'fp16')
