"""YOLACT -> ONNX, with Fast NMS and mask assembly inside the graph.

The graph (README, "The model contract"):
    images uint8 [B, H, W, 3] BGR, any H and W
    -> cast, resize to the model size, normalise, BGR->RGB, NHWC->NCHW      (export/graph.py)
    -> YOLACT -> softmax(conf) -> decode(loc, priors) -> drop the background column
    -> yolact::FastNMS -> yolact::MaskAssembly                              (export/postprocess_nodes.py)
    -> num_dets int32 [B], boxes float32 [B, D, 4] xyxy relative, scores float32 [B, D],
       classes int32 [B, D] 0-based, masks float32 [B, D, Hp, Wp]
`postprocess=False` stops after the network: loc, conf (softmax), coef, proto (NHWC), priors.

Tracing uses torch.export (the dynamo exporter): it gives a graph whose only shape arithmetic is
the input's batch, height and width (the resize taps, yolact_torch/preprocess.py) and keeps interpolation
to exact sizes (`Resize` with `sizes`), which stays exact for any batch. The trace is then folded and cleaned until nothing changes
(export/cleanup.py) before the post-processing ops are appended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import onnx
import torch

from export.cleanup import fold_and_clean, strip_trace_metadata
from export.deform_conv import TRANSLATIONS, add_deform_conv_function
from export.graph import DeployNetwork
from export.postprocess_nodes import append_postprocess
from yolact_torch.config import YolactConfig, metadata_from_config
from plugins.onnx_model import DECODED_HEAD_NAMES
from yolact_torch.priors import feature_sizes
from yolact_torch.protonet import UPSAMPLE_FACTOR
from runtime import __version__
from runtime.contract import BATCH_DIM, HEIGHT_DIM, INPUT_NAME, METADATA_KEY, RAW_OUTPUTS, WIDTH_DIM, metadata_from_props
from runtime.errors import ToolkitError
from runtime.files import check_writable, write_atomic
from runtime.host_memory import available_memory, check_fits, largest_fitting
from runtime.metadata import ModelMetadata

# Opset 19: what modelopt's INT8 quantiser emits, inside what onnxruntime 1.24 (7..25) and
# TensorRT's parser (TensorRT 10 and TensorRT-RTX) accept. The IR version is the exporter's (10).
OPSET = 19
# Readable copies of the most asked-for fields (`polygraphy inspect model` and Netron show them).
# float32 [D, Hp, Wp] tensors an image's mask assembly holds at once: the masks output and the
# product proto @ coef^T it is computed from (the sigmoid and crop run in place of one of them).
_MASK_COPIES = 2
_READABLE_KEYS = ('config', 'precision', 'input_size', 'class_names', 'cross_class', 'max_dets')


class ExportError(ToolkitError, ValueError):
    """The model cannot be exported as asked (bad arguments, unwritable output, failed checks)."""


# Loggers of the exporter's internals that warn about things that are not the user's to fix
# (torchvision's ops not being registered, the priors constant output not being deduplicated).
_EXPORTER_LOGGERS = ('torch.onnx._internal.exporter._registration', 'onnx_ir.passes.common.initializer_deduplication')


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def trace_network(network: DeployNetwork, cfg: YolactConfig, output_names) -> onnx.ModelProto:
    """torch.export the network with dynamic batch, height and width; returns the raw ONNX trace."""
    height, width = cfg.input_size
    # Batch 2, not 1: torch.export specialises a dimension whose example size is 0 or 1. Height and
    # width differ from each other and from the model size, so that no dimension is tied to another.
    example = torch.zeros((2, height + 3, width + 5, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), _quiet_loggers(*_EXPORTER_LOGGERS), torch.no_grad():
        # torch.export warns about its own internals (pytree spec deprecations); they are not ours.
        warnings.simplefilter('ignore', FutureWarning)
        program = torch.onnx.export(
            network, (example,), dynamo=True, opset_version=OPSET, verbose=False, optimize=True,
            input_names=[INPUT_NAME], output_names=list(output_names), custom_translation_table=TRANSLATIONS,
            # Positional (the forward's one argument): the graph input's name is INPUT_NAME, above.
            dynamic_shapes=({0: torch.export.Dim(BATCH_DIM), 1: torch.export.Dim(HEIGHT_DIM),
                             2: torch.export.Dim(WIDTH_DIM)},))
    return program.model_proto


def attach_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Store `meta` under METADATA_KEY (JSON) plus a few readable per-field keys."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {
        METADATA_KEY: meta.to_json(),
        **{f'yolact.{key}': str(getattr(meta, key)) for key in _READABLE_KEYS},
    })
    model.graph.name = meta.config
    model.producer_name = 'yolact-deploy'
    model.producer_version = __version__
    model.doc_string = (f'YOLACT {meta.config}: uint8 BGR NHWC images of any size in, resized to '
                        f'{meta.input_size[0]}x{meta.input_size[1]} inside; see {METADATA_KEY} for classes and thresholds')


def read_metadata(model: onnx.ModelProto, source: str = 'ONNX model') -> ModelMetadata:
    """The ModelMetadata stored by `attach_metadata`; MetadataError if missing or malformed."""
    return metadata_from_props({p.key: p.value for p in model.metadata_props}, source)


def check_model(model: onnx.ModelProto) -> None:
    """Full onnx.checker pass and strict shape inference (through the function bodies); ExportError
    names what failed."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f'the exported graph does not pass the ONNX checker: {e}') from None


def check_max_dets(cfg: YolactConfig, max_dets: int, available: int | None = None) -> None:
    """ExportError for a detection count D that Fast NMS can never fill (it keeps at most
    cfg.nms_top_k candidates per class), MemoryLimitError for one whose masks output (float32
    [D, Hp, Wp] per image, padded to D whatever is found) cannot fit in `available` bytes (default:
    this machine's available memory) for one image."""
    if max_dets < 1:
        raise ExportError(f'max_dets must be at least 1, got {max_dets}')
    classes = cfg.num_classes - 1
    candidates = cfg.nms_top_k * classes
    if max_dets > candidates:
        raise ExportError(f'--max-dets {max_dets} is more than Fast NMS can return: it keeps at most {candidates} '
                          f'candidates ({cfg.nms_top_k} per class x {classes} classes); pass --max-dets {candidates} '
                          f'or less (default {cfg.max_num_detections})')
    proto_h, proto_w = (side * UPSAMPLE_FACTOR for side in feature_sizes(cfg)[0])
    per_detection = _MASK_COPIES * proto_h * proto_w * 4
    available = available_memory() if available is None else available
    fitting = largest_fitting(0, per_detection, available)
    check_fits(max_dets * per_detection, f'--max-dets {max_dets} (masks of {proto_h}x{proto_w} per detection, '
               'for one image)', f'pass --max-dets {fitting} or less (default {cfg.max_num_detections})', available)


def build_onnx(yolact: torch.nn.Module, cfg: YolactConfig, *, postprocess: bool = True,
               cross_class: bool = False, max_dets: int | None = None) -> onnx.ModelProto:
    """The ONNX model of `yolact` (a yolact_torch.yolact.Yolact for `cfg`, any weights; put in eval
    mode), checked.

    postprocess: append FastNMS + MaskAssembly, and YOLACT++'s mask re-scoring when the model has a
        maskiou_net (outputs POSTPROCESS_OUTPUTS, and BOX_SCORES with a maskiou_net); False exports the raw head (RAW_OUTPUTS). cross_class: Fast NMS across classes instead of per class.
    max_dets: detections per image D (default cfg.max_num_detections).
    """
    max_dets = cfg.max_num_detections if max_dets is None else int(max_dets)
    check_max_dets(cfg, max_dets)
    network = DeployNetwork(yolact, cfg, decode_boxes=postprocess).eval()
    model = trace_network(network, cfg, DECODED_HEAD_NAMES if postprocess else RAW_OUTPUTS)
    strip_trace_metadata(model)
    model = add_deform_conv_function(fold_and_clean(model))
    if postprocess:
        model = append_postprocess(model, cfg, cross_class=cross_class, max_dets=max_dets,
                                   maskiou_net=yolact.maskiou_net)
    attach_metadata(model, metadata_from_config(cfg, cross_class=cross_class, max_dets=max_dets))
    check_model(model)
    return model


def save_model(model: onnx.ModelProto, output: str | os.PathLike) -> Path:
    """Write `model` to `output` atomically (temporary file in the same folder, then os.replace),
    creating the folder; OutputError (runtime.files) when it cannot be written."""
    output = check_writable(output, 'output')
    if model.ByteSize() >= 2**31 - 1:
        # Protobuf's limit; no YOLACT config comes close (yolact_base is ~200 MB).
        raise ExportError(f'the model is {model.ByteSize() / 2**30:.1f} GiB, over the 2 GiB ONNX file limit')
    return write_atomic(output, model.SerializeToString())


def export_onnx(yolact: torch.nn.Module, cfg: YolactConfig, output: str | os.PathLike, **options) -> Path:
    """build_onnx(yolact, cfg, **options) written atomically to `output`; returns the path.
    The output is checked first, so a bad path fails before the (slow) trace."""
    check_writable(output, 'output')
    return save_model(build_onnx(yolact, cfg, **options), output)
