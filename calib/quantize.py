"""INT8: explicit Q/DQ nodes placed by modelopt, scales from calibration over real images.

TensorRT 10+ takes INT8 from Q/DQ nodes in the ONNX (no calibrator at build time), so the
precision is decided here. Steps:
1. split off the post-processing (calib/graph.py): it stays FP32 and gets no Q/DQ, nor does
   anything after the last convolutions (head reshapes, softmax, box decoding) or before the
   first (the pre-processing: cast, resize, normalisation), nor YOLACT++'s deformable convolutions,
   inlined into the network for the placement and collapsed back afterwards (calib/deform_conv.py);
2. calibrate the network's activation ranges with onnxruntime's calibrator over the images, in
   chunks (a progress bar, and memory bounded by one chunk); the ranges go to the cache
   (calib/cache.py), and a later run with the same network, images and method reads them back;
3. place Q/DQ with the activation ranges from that cache, in one of two layouts (LAYOUTS):
   - tensorrt (the default, for engines): modelopt's INT8 PTQ by TensorRT's fusion rules (Conv
     inputs and weights, residual Adds, ...), symmetric int8, convolution outputs left in float
     for TensorRT to fuse;
   - onnxruntime (for onnxruntime on a CPU): onnxruntime's own QDQ placement, uint8 activations
     (0-based after a Relu) and per-channel int8 weights, a Q/DQ pair on each convolution's
     output too, which is what lets onnxruntime's CPU provider fuse the convolution into an
     integer QLinearConv; the convolutions producing the network's outputs stay FP32. TensorRT
     takes no uint8 Q/DQ, so this layout is for onnxruntime only;
4. re-attach the post-processing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import calibrate
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.registry import QDQRegistry
from tqdm import tqdm

from calib.cache import cache_file, cache_problem, calibration_key, read_amax, write_cache
from calib.deform_conv import body_nodes, internal_nodes
from calib.graph import (KEEP_OFFSETS, CalibrationError, after_last_convolutions, convolution_inputs,
                         join_postprocess, kept_convolutions, module_names, preprocessing_nodes, producing_convs,
                         split_postprocess)
from runtime.contract import INPUT_NAME
from runtime.files import check_writable, scratch_folder

log = logging.getLogger(__name__)


CALIBRATION_METHODS = {
    'entropy': CalibrationMethod.Entropy,  # KL-divergence threshold (TensorRT's EntropyCalibrator2)
    'max': CalibrationMethod.MinMax,  # largest absolute value seen
    'percentile': CalibrationMethod.Percentile,  # 99.999th percentile of absolute values
}
# Images per calibrator call: the calibrator holds every tensor of a chunk in memory, so one
# image at a time gives the lowest peak (the demo model: 550 MB against 580 MB with 4, for the same
# ranges), and the bar still moves per image.
CHUNK_SIZE = 1
MODELOPT_LOGGER = 'modelopt.onnx'
LAYOUTS = ('tensorrt', 'onnxruntime')
QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')
# Ops the onnxruntime layout quantises: the network's convolutions and what joins them, so that
# consecutive integer convolutions need no float round trip between them.
ORT_QUANTIZED_OPS = ['Conv', 'Add', 'Relu', 'MaxPool', 'Resize']
# onnxruntime's QDQ handler per op type, as onnxruntime ships them. modelopt's INT8 run (the
# tensorrt layout) edits this registry process-wide, dropping Relu among others; onnxruntime's
# quantizer then kept each Relu with a Q/DQ pair of its own instead of folding it into the
# convolution's uint8 range, 10-15% slower in onnxruntime. Copied at import, before this module
# runs modelopt, and put back while the onnxruntime layout is placed.
_ORT_QDQ_REGISTRY = dict(QDQRegistry)


@dataclass(frozen=True)
class Int8Result:
    """model: the INT8 ONNX model; cache: the calibration cache file; cache_hit: whether it was
    read (True) or written by this run (False); kept_fp32: convolutions left unquantised (node
    names); kept_fp32_modules: the same as the model's module names (calib.graph.module_names)."""

    model: onnx.ModelProto
    cache: Path
    cache_hit: bool
    kept_fp32: tuple[str, ...]
    kept_fp32_modules: tuple[str, ...]


class _ChunkReader(CalibrationDataReader):
    """Feeds images (uint8 [H, W, 3] each, any size) one at a time (batch 1, as the calibrator expects)."""

    def __init__(self, images: Sequence[np.ndarray]):
        self._images = iter(images)

    def get_next(self):
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: image[None]}


@contextlib.contextmanager
def _library_bars_off():
    """Silence the progress bars modelopt's patched calibrator draws per tensor and per chunk
    (about 2300 nested lines for yolact_resnet50); calibration shows one bar of its own. modelopt
    imports tqdm into that module, so its name there is what is replaced."""
    from modelopt.onnx.quantization import ort_patching

    bar = ort_patching.tqdm
    ort_patching.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        ort_patching.tqdm = bar


def calibrate_amax(network_path: Path, images: Sequence[np.ndarray], method: str,
                   work_dir: Path, skipped: Collection[str] = ()) -> dict[str, float]:
    """Largest absolute value to represent for each float tensor of the network but the outputs of
    the nodes named in `skipped`.

    images: uint8 [H, W, 3] BGR each, at their own size (the graph resizes, as at inference); a
        sequence read CHUNK_SIZE images at a time (calib.images.CalibrationImages loads them when asked).
    """
    # modelopt patches onnxruntime's calibrators process-wide the first time it quantises (bounded
    # memory, its EP set-up, node names instead of op types to choose tensors). Patch first, so
    # every calibration runs the same code, whichever ran before in this process.
    from modelopt.onnx.quantization.ort_patching import patch_ort_modules

    patch_ort_modules()
    network = onnx.load(network_path)
    calibrator = calibrate.create_calibrator(
        network_path, [n.name for n in network.graph.node if n.name not in skipped],
        augmented_model_path=work_dir / 'augmented.onnx',
        calibrate_method=CALIBRATION_METHODS[method],
        extra_options={'symmetric': True, 'execution_providers': ['CPUExecutionProvider']})
    # The calibrator print()s its progress; the bar below says the same on stderr.
    with tqdm(total=len(images), desc=f'calibrating ({method})', unit='img') as progress, \
            contextlib.redirect_stdout(io.StringIO()), _library_bars_off():
        for start in range(0, len(images), CHUNK_SIZE):
            chunk = images[start:start + CHUNK_SIZE]
            calibrator.collect_data(_ChunkReader(chunk))
            progress.update(len(chunk))
        ranges = calibrator.compute_data()
    return {name: max(abs(float(np.max(data.range_value[0]))), abs(float(np.max(data.range_value[1]))))
            for name, data in ranges.data.items()}


def check_int8_options(method: str, layout: str) -> None:
    """CalibrationError naming the choices unless `method` is in CALIBRATION_METHODS and `layout` in LAYOUTS."""
    if method not in CALIBRATION_METHODS:
        raise CalibrationError(f'unknown calibration method {method!r}: choose one of {", ".join(CALIBRATION_METHODS)}')
    if layout not in LAYOUTS:
        raise CalibrationError(f'unknown INT8 layout {layout!r}: choose one of {", ".join(LAYOUTS)}')


def quantize_int8(model: onnx.ModelProto, images: Sequence[np.ndarray], *, method: str = 'entropy',
                  keep_sensitive: bool = False, keep_offsets: bool = KEEP_OFFSETS, cache_dir: str | os.PathLike,
                  model_name: str, layout: str = 'tensorrt') -> Int8Result:
    """The INT8 (Q/DQ) version of `model`, an exported YOLACT ONNX model.

    images: uint8 [H, W, 3] BGR calibration images, each at its own size as the runtime feeds them, a
        sequence read a chunk at a time (calib.images.CalibrationImages: memory does not grow with their number).
    layout: 'tensorrt' or 'onnxruntime' (see the module's notes); both use the same cached ranges.
    keep_sensitive: leave the convolutions producing the prototypes and the mask coefficients
        unquantised (FP32). The result's kept_fp32 lists every convolution left in FP32.
    keep_offsets: leave YOLACT++'s offset/mask convolutions (`...conv2.conv_offset_mask`, in front
        of each deformable convolution) unquantised; no effect on YOLACT.
    cache_dir / model_name: where the calibration cache lives and the name it is filed under.
    """
    check_int8_options(method, layout)
    if len(images) == 0:
        raise CalibrationError('no calibration images: give at least one')
    split = split_postprocess(model)
    kept = tuple(kept_convolutions(split, keep_sensitive=keep_sensitive, keep_offsets=keep_offsets))
    if layout == 'onnxruntime':
        # This layout quantises each convolution's output too; the last ones (box offsets, class
        # logits, coefficients, prototypes) would be rounded to 8 bits, which TensorRT's layout
        # leaves in float. They stay FP32: a few percent of the network's multiply-adds.
        outputs = [o.name for o in split.network.graph.output]
        kept += tuple(c for c in producing_convs(split.network, outputs) if c not in kept)
    key = calibration_key(split.network, images, method)
    cache = cache_file(cache_dir, model_name, method, key)
    problem = cache_problem(cache, convolution_inputs(split.network)) if cache.is_file() else None
    if problem is not None:
        log.warning('calibration cache %s is unusable (%s): calibrating again', cache, problem)
    cache_hit = cache.is_file() and problem is None
    if not cache_hit:
        check_writable(cache, 'calibration cache')  # before the calibration, which takes minutes

    with scratch_folder('yolact-int8-') as work:
        network_path = work / 'network.onnx'
        onnx.save(split.network, network_path)
        if not cache_hit:
            write_cache(cache, calibrate_amax(network_path, images, method, work,
                                              internal_nodes(split.network, split.deform_convs)))
        # The deformable convolutions' bodies stay FP32, the precision of the TensorRT plugin.
        excluded = (*preprocessing_nodes(split.network), *kept, *after_last_convolutions(split.network),
                    *body_nodes(split.network, split.deform_convs))
        if layout == 'tensorrt':
            quantized = _place_qdq(network_path, images[0][None], cache, excluded, work)
        else:
            # Read back even when just written, so a cache hit and a miss give the same model.
            quantized = _place_qdq_onnxruntime(network_path, read_amax(cache), excluded)
    if not any(n.op_type in QDQ_OPS for n in quantized.graph.node):
        raise CalibrationError(f'the INT8 placement put no Q/DQ node in the network (ranges from {cache}): the model '
                               'would not be INT8; delete that cache file and rerun with --verbose to see why')
    return Int8Result(join_postprocess(quantized, split, 'int8'), cache, cache_hit, kept,
                      module_names(split.network, kept))


def _place_qdq(network_path: Path, sample: np.ndarray, cache: Path, excluded: tuple[str, ...],
               work: Path) -> onnx.ModelProto:
    """modelopt's Q/DQ placement with the scales from `cache`; nodes named in `excluded` stay FP32.

    modelopt still runs ORT's calibration before it overwrites the scales with the cache's, so it
    gets one image and the cheap 'max' method.
    """
    from modelopt.onnx.quantization import quantize

    output = work / 'network.int8.onnx'
    with _library_bars_off():
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


def _place_qdq_onnxruntime(network_path: Path, amax: dict[str, float], excluded: tuple[str, ...]) -> onnx.ModelProto:
    """onnxruntime's QDQ placement with the ranges `amax`; nodes named in `excluded` stay FP32.

    onnxruntime's quantize_static would calibrate again, and its calibrator is the one modelopt
    patches process-wide (it then selects no tensors), so its quantizer is given the ranges
    directly. The cached ranges are symmetric; a Relu's output is known to be >= 0, so its range
    starts at 0 and keeps all 8 bits of the uint8 activation.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    network = load_model_with_shape_infer(network_path)
    non_negative = {o for n in network.graph.node if n.op_type == 'Relu' for o in n.output}
    ranges = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(0 if name in non_negative else -value), highest=np.float32(value))
        for name, value in amax.items()})
    quantizer = QDQQuantizer(network, per_channel=True, reduce_range=False, weight_qType=QuantType.QInt8,
                             activation_qType=QuantType.QUInt8, tensors_range=ranges, nodes_to_quantize=None,
                             nodes_to_exclude=list(excluded), op_types_to_quantize=ORT_QUANTIZED_OPS, extra_options={})
    modelopts_registry = dict(QDQRegistry)
    QDQRegistry.clear()
    QDQRegistry.update(_ORT_QDQ_REGISTRY)
    try:
        quantizer.quantize_model()
    finally:  # modelopt's next run expects its own edits
        QDQRegistry.clear()
        QDQRegistry.update(modelopts_registry)
    quantizer.model.topological_sort()  # the Q/DQ nodes were appended; what save_model_to_file does
    return _one_weight_per_convolution(quantizer.model.model)


def _one_weight_per_convolution(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each shared quantised weight copied per consumer: its int8 initializer, scale,
    zero point and DequantizeLinear node.

    YOLACT's prediction head is one module applied to every FPN level, so the quantiser gives its
    weight one DequantizeLinear feeding a convolution per level. onnxruntime fuses each into a
    QLinearConv on the same int8 initializer, and its exact u8u8 kernels (the runtime's choice on x86
    CPUs without VNNI) rewrite every QLinearConv's weight to uint8 by name: the second rewrite of a
    shared one fails the session ('Attempt to replace the existing tensor'). A copy per level costs
    the head's int8 weights once per extra level.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    nodes = []
    for node in graph.node:
        nodes.append(node)
        consumers = users.get(node.output[0], []) if node.op_type == 'DequantizeLinear' else []
        if len(consumers) < 2 or not all(name in initializers for name in node.input):
            continue
        for copy, consumer in enumerate(consumers[1:], start=1):
            inputs = []
            for name in node.input:
                duplicate = onnx.TensorProto()
                duplicate.CopyFrom(initializers[name])
                duplicate.name = f'{name}_{copy}'
                graph.initializer.append(duplicate)
                inputs.append(duplicate.name)
            output = f'{node.output[0]}_{copy}'
            nodes.append(onnx.helper.make_node('DequantizeLinear', inputs, [output], name=f'{node.name}_{copy}',
                                               axis=next((a.i for a in node.attribute if a.name == 'axis'), 1)))
            consumer.input[:] = [output if name == node.output[0] else name for name in consumer.input]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
