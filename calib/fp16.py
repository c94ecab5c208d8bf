"""FP16: the network's weights and activations in half precision, by modelopt's AutoCast.

TensorRT 10+ is strongly typed from the ONNX, so FP16 means FP16 tensors in the graph. AutoCast
converts node by node and keeps in FP32 any node whose inputs or outputs exceed FP16's safe range
on real data (it runs the calibration images through the model to see). The uint8 `images` input
and every network output keep their types (`keep_io_types`), so the post-processing, re-attached
afterwards (calib/graph.py), reads FP32 as before and runs in FP32. The pre-processing (cast, resize,
normalisation) stays FP32 too (calib.graph.preprocessing_nodes), and so do YOLACT++'s deformable
convolutions (calib/deform_conv.py), with a Cast to FP32 in front of each.

AutoCast's own reference run keeps every tensor of every calibration batch until the last one has
run, so its memory grew with the image count (the demo: 0.7 GB at 2 images, 4.9 GB at 64). Here it
runs with StreamingReferenceRunner instead, which reduces each image's tensors to the same
statistics as soon as that image has run: the same classification, in the memory of one image.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from modelopt.onnx import utils as onnx_utils
from modelopt.onnx.autocast import convert as autocast_convert
from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats

from calib.deform_conv import body_nodes
from calib.graph import KEEP_OFFSETS, join_postprocess, kept_convolutions, preprocessing_nodes, split_postprocess
from runtime.contract import INPUT_NAME
from runtime.files import scratch_folder


class StreamingReferenceRunner(ReferenceRunner):
    """modelopt's ReferenceRunner, reducing as it goes.

    `run` returns what ReferenceRunner.run returns for several batches: tensor name -> TensorStats
    (absmax, min_val, max_val over all batches; shape of the first batch), for the model's inputs
    and every tensor a node produces. It builds the same onnxruntime session and checks the inputs
    the same way (ReferenceRunner._get_ort_runner, _validate_inputs), but folds each batch into the
    statistics before the next one runs, where ReferenceRunner keeps every batch's tensors and
    reduces them at the end (_aggregate_tensor_stats). Only the statistics reach AutoCast's node
    classifier (modelopt.onnx.autocast.nodeclassifier.IORangeRule), so the classification is the same.
    """

    def run(self, inputs=None) -> OrderedDict:
        """inputs: a folder of .npz files, one batch each, keyed by input name (AutoCast's
        calibration_data)."""
        from polygraphy import constants
        from polygraphy.backend.onnx import ModifyOutputs

        model = copy.deepcopy(self.model)
        onnx_utils.clear_stale_value_info(model)  # as ReferenceRunner.run: stale types fail in onnxruntime
        runners, model_temp_dir = self._get_ort_runner(ModifyOutputs(model, outputs=constants.MARK_ALL))
        stats: OrderedDict[str, TensorStats] = OrderedDict()
        try:
            with runners[0] as runner:
                # One file open at a time: ReferenceRunner._load_inputs opens them all at once, and
                # with one file per image a large --count would run out of file handles.
                for path in sorted(Path(inputs).glob('*.npz')):
                    with np.load(path) as batch:
                        feed = {name: batch[name] for name in batch.files}
                    self._validate_inputs([feed])
                    _fold(stats, {**feed, **runner.infer(feed)})
        finally:
            if model_temp_dir is not None:
                model_temp_dir.cleanup()
        return stats


def _fold(stats: OrderedDict[str, TensorStats], tensors: dict[str, np.ndarray]) -> None:
    """Fold one batch's tensors into `stats` in place, as ReferenceRunner._aggregate_tensor_stats
    reduces them: an empty tensor counts as 0, the shape is the first batch's."""
    for name, data in tensors.items():
        empty = data.size == 0
        low = 0 if empty else np.min(data)
        high = 0 if empty else np.max(data)
        # max |x| from the extremes, without the copy np.abs would make of every tensor (NaN stays NaN).
        absmax = max(abs(low), abs(high))
        # Starting from -inf/inf as modelopt does keeps its max()/min() semantics, NaN included.
        seen = stats.setdefault(name, TensorStats(absmax=-np.inf, min_val=np.inf, max_val=-np.inf, shape=data.shape))
        seen.absmax, seen.min_val, seen.max_val = max(seen.absmax, absmax), min(seen.min_val, low), max(seen.max_val, high)


@contextlib.contextmanager
def _streaming_reference() -> Iterator[None]:
    """AutoCast's convert_to_mixed_precision with StreamingReferenceRunner: it looks the runner up
    by its name in its module (tests/calib/test_fp16.py checks that it still does)."""
    original = autocast_convert.ReferenceRunner
    autocast_convert.ReferenceRunner = StreamingReferenceRunner
    try:
        yield
    finally:
        autocast_convert.ReferenceRunner = original


def autocast_fp16(network: onnx.ModelProto, images: Sequence[np.ndarray], kept: Sequence[str]) -> onnx.ModelProto:
    """`network` (uint8 input `images`, float32 outputs) with FP16 nodes wherever AutoCast finds the
    calibration data in FP16's range; the nodes named in `kept` stay FP32, and so do the input and
    output types.

    images: uint8 [H, W, 3] BGR each, at their own size; each is run alone, so that no more than one
    image's tensors are in memory at a time.
    """
    with scratch_folder('yolact-fp16-') as tmp:
        network_path = tmp / 'network.onnx'
        onnx.save(network, network_path)
        # AutoCast reads its reference inputs from .npz files keyed by input name, one batch per
        # file in a folder.
        data_path = tmp / 'calibration'
        data_path.mkdir()
        for index in range(len(images)):
            np.savez(data_path / f'{index:06d}.npz', **{INPUT_NAME: images[index][None]})
        with _streaming_reference():
            return autocast_convert.convert_to_mixed_precision(
                str(network_path), low_precision_type='fp16', keep_io_types=True,
                nodes_to_exclude=[f'^{re.escape(name)}$' for name in kept],
                calibration_data=str(data_path), providers=['cpu'])


def convert_fp16(model: onnx.ModelProto, images: Sequence[np.ndarray], *,
                 keep_sensitive: bool = False, keep_offsets: bool = KEEP_OFFSETS) -> onnx.ModelProto:
    """The FP16 version of `model`, an exported YOLACT ONNX model.

    images: uint8 [H, W, 3] BGR each, at their own size as the runtime feeds them: AutoCast's
        reference data.
    keep_sensitive: keep the convolutions producing the prototypes and the mask coefficients FP32.
    keep_offsets: keep YOLACT++'s offset/mask convolutions FP32 (calib.graph.kept_convolutions).
    """
    split = split_postprocess(model)
    # The deformable convolutions' bodies stay FP32, the precision of the TensorRT plugin.
    kept = (preprocessing_nodes(split.network) + body_nodes(split.network, split.deform_convs)
            + kept_convolutions(split, keep_sensitive=keep_sensitive, keep_offsets=keep_offsets))
    return join_postprocess(autocast_fp16(split.network, images, kept), split, 'fp16')
