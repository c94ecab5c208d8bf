"""FP16: the network's weights and activations in half precision, by modelopt's AutoCast.

TensorRT 10+ is strongly typed from the ONNX, so FP16 means FP16 tensors in the graph. AutoCast
converts node by node and keeps in FP32 any node whose inputs or outputs exceed FP16's safe range
on real data (it runs the calibration images through the model to see). The uint8 `images` input
and every network output keep their types (`keep_io_types`), so the post-processing, re-attached
afterwards (calib/graph.py), reads FP32 as before and runs in FP32. The pre-processing (cast, resize,
normalisation) stays FP32 too (calib.graph.preprocessing_nodes), and so do YOLACT++'s deformable
convolutions (calib/deform_conv.py), with a Cast to FP32 in front of each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx

from calib.deform_conv import body_nodes
from calib.graph import KEEP_OFFSETS, join_postprocess, kept_convolutions, preprocessing_nodes, split_postprocess
from runtime.contract import INPUT_NAME
from runtime.files import scratch_folder
from runtime.pipeline import same_size_groups



def convert_fp16(model: onnx.ModelProto, images: Sequence[np.ndarray], *,
                 keep_sensitive: bool = False, keep_offsets: bool = KEEP_OFFSETS) -> onnx.ModelProto:
    """The FP16 version of `model`, an exported YOLACT ONNX model.

    images: uint8 [H, W, 3] BGR each, at their own size as the runtime feeds them: AutoCast's
        reference data (one batch per size).
    keep_sensitive: keep the convolutions producing the prototypes and the mask coefficients FP32.
    keep_offsets: keep YOLACT++'s offset/mask convolutions FP32 (calib.graph.kept_convolutions).
    """
    from modelopt.onnx.autocast import convert_to_mixed_precision

    split = split_postprocess(model)
    # The deformable convolutions' bodies stay FP32, the precision of the TensorRT plugin.
    kept = (preprocessing_nodes(split.network) + body_nodes(split.network, split.deform_convs)
            + kept_convolutions(split, keep_sensitive=keep_sensitive, keep_offsets=keep_offsets))
    with scratch_folder('yolact-fp16-') as tmp:
        network_path = tmp / 'network.onnx'
        onnx.save(split.network, network_path)
        # AutoCast reads its reference inputs from .npz files keyed by input name, one batch per
        # file in a folder: a batch holds images of one size.
        data_path = tmp / 'calibration'
        data_path.mkdir()
        for index, group in enumerate(same_size_groups(images)):
            np.savez(data_path / f'{index:06d}.npz', **{INPUT_NAME: np.stack([images[i] for i in group])})
        network = convert_to_mixed_precision(
            str(network_path), low_precision_type='fp16', keep_io_types=True,
            nodes_to_exclude=[f'^{re.escape(name)}$' for name in kept],
            calibration_data=str(data_path), providers=['cpu'])
    return join_postprocess(network, split, 'fp16')
