"""INT8: explicit Q/DQ nodes placed by modelopt, scales from calibration over real images.

TensorRT 10+ takes INT8 from Q/DQ nodes in the ONNX (no calibrator at build time), so the
precision is decided here. Steps:
1. split off the post-processing (calib/graph.py): it stays FP32 and gets no Q/DQ, nor does
   anything after the last convolutions (head reshapes, softmax, box decoding);
2. calibrate the network's activation ranges with onnxruntime's calibrator over the images, in
   chunks (a progress bar, and memory bounded by one chunk); the ranges go to the cache
   (calib/cache.py), and a later run with the same network, images and method reads them back;
3. modelopt's INT8 PTQ places Q/DQ by TensorRT's fusion rules (Conv inputs and weights, residual
   Adds, ...) and takes the activation scales from that cache;
4. re-attach the post-processing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import calibrate
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod
from tqdm import tqdm

from calib.cache import cache_file, calibration_key, write_cache
from calib.graph import (CalibrationError, after_last_convolutions, join_postprocess, producing_convs,
                         split_postprocess)


CALIBRATION_METHODS = {
    'entropy': CalibrationMethod.Entropy,  # KL-divergence threshold (TensorRT's EntropyCalibrator2)
    'max': CalibrationMethod.MinMax,  # largest absolute value seen
    'percentile': CalibrationMethod.Percentile,  # 99.999th percentile of absolute values
}
# Images per calibrator call: the calibrator holds every tensor of a chunk in memory.
CHUNK_SIZE = 4
INPUT_NAME = 'images'
MODELOPT_LOGGER = 'modelopt.onnx'


@dataclass(frozen=True)
class Int8Result:
    """model: the INT8 ONNX model; cache: the calibration cache file; cache_hit: whether it was
    read (True) or written by this run (False); kept_fp32: convolutions left unquantised."""

    model: onnx.ModelProto
    cache: Path
    cache_hit: bool
    kept_fp32: tuple[str, ...]


class _ChunkReader(CalibrationDataReader):
    """Feeds images [N, H, W, 3] uint8 one at a time (batch 1, as the calibrator expects)."""

    def __init__(self, images: np.ndarray):
        self._images = iter(images)

    def get_next(self):
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: image[None]}


def calibrate_amax(network_path: Path, images: np.ndarray, method: str, work_dir: Path) -> dict[str, float]:
    """Largest absolute value to represent for each float tensor of the network.

    images: uint8 [N, H, W, 3] BGR at the model's input size (pre-processed as at inference).
    """
    # modelopt patches onnxruntime's calibrators process-wide the first time it quantises (bounded
    # memory, its EP set-up, node names instead of op types to choose tensors). Patch first, so
    # every calibration runs the same code, whichever ran before in this process.
    from modelopt.onnx.quantization.ort_patching import patch_ort_modules

    patch_ort_modules()
    network = onnx.load(network_path)
    calibrator = calibrate.create_calibrator(
        network_path, [n.name for n in network.graph.node], augmented_model_path=work_dir / 'augmented.onnx',
        calibrate_method=CALIBRATION_METHODS[method],
        extra_options={'symmetric': True, 'execution_providers': ['CPUExecutionProvider']})
    # The calibrator print()s its progress; the bar below says the same on stderr.
    with tqdm(total=len(images), desc=f'calibrating ({method})', unit='img') as progress, \
            contextlib.redirect_stdout(io.StringIO()):
        for start in range(0, len(images), CHUNK_SIZE):
            chunk = images[start:start + CHUNK_SIZE]
            calibrator.collect_data(_ChunkReader(chunk))
            progress.update(len(chunk))
        ranges = calibrator.compute_data()
    return {name: max(abs(float(np.max(data.range_value[0]))), abs(float(np.max(data.range_value[1]))))
            for name, data in ranges.data.items()}


def quantize_int8(model: onnx.ModelProto, images: np.ndarray, *, method: str = 'entropy',
                  keep_sensitive: bool = False, cache_dir: str | os.PathLike, model_name: str) -> Int8Result:
    """The INT8 (Q/DQ) version of `model`, an exported YOLACT ONNX model.

    images: uint8 [N, H, W, 3] BGR calibration images at the model's input size.
    keep_sensitive: leave the convolutions producing the prototypes and the mask coefficients
        unquantised (FP32).
    cache_dir / model_name: where the calibration cache lives and the name it is filed under.
    """
    if method not in CALIBRATION_METHODS:
        raise CalibrationError(f'unknown calibration method {method!r}: choose one of {", ".join(CALIBRATION_METHODS)}')
    if len(images) == 0:
        raise CalibrationError('no calibration images: give at least one')
    split = split_postprocess(model)
    kept = tuple(producing_convs(split.network, split.mask_inputs)) if keep_sensitive else ()
    key = calibration_key(split.network, images, method)
    cache = cache_file(cache_dir, model_name, method, key)
    cache_hit = cache.is_file()

    with tempfile.TemporaryDirectory(prefix='yolact-int8-') as tmp:
        work = Path(tmp)
        network_path = work / 'network.onnx'
        onnx.save(split.network, network_path)
        if not cache_hit:
            write_cache(cache, calibrate_amax(network_path, images, method, work))
        excluded = (*kept, *after_last_convolutions(split.network))
        quantized = _place_qdq(network_path, images[:1], cache, excluded, work)
    return Int8Result(join_postprocess(quantized, split, 'int8'), cache, cache_hit, kept)


def _place_qdq(network_path: Path, sample: np.ndarray, cache: Path, excluded: tuple[str, ...],
               work: Path) -> onnx.ModelProto:
    """modelopt's Q/DQ placement with the scales from `cache`; nodes named in `excluded` stay FP32.

    modelopt still runs ORT's calibration before it overwrites the scales with the cache's, so it
    gets one image and the cheap 'max' method.
    """
    from modelopt.onnx.quantization import quantize

    output = work / 'network.int8.onnx'
    quantize(
        str(network_path), quantize_mode='int8', calibration_data={INPUT_NAME: sample},
        calibration_method='max', calibration_cache_path=str(cache), calibration_eps=['cpu'],
        # fp32: everything not quantised stays FP32 (modelopt's default fp16 is for GPUs).
        high_precision_dtype='fp32', nodes_to_exclude=[f'^{re.escape(name)}$' for name in excluded],
        output_path=str(output),
        # quantize() resets modelopt's log level: pass on the one the caller chose.
        log_level=logging.getLevelName(logging.getLogger(MODELOPT_LOGGER).getEffectiveLevel()))
    if not output.is_file():
        raise CalibrationError('modelopt wrote no INT8 model; run with --verbose to see its log')
    return onnx.load(output)
