"""FP32 ONNX -> FP16 or INT8 ONNX: the library entry point behind `python -m calib`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from calib.fp16 import convert_fp16
from calib.graph import KEEP_OFFSETS, CalibrationError, model_metadata
from calib.images import image_paths, load_calibration_images
from calib.quantize import MODELOPT_LOGGER, check_int8_options, quantize_int8
from export.onnx_export import ExportError, check_model, save_model
from runtime.artifacts import precision_path

log = logging.getLogger(__name__)

TARGET_PRECISIONS = ('fp16', 'int8')
# Images used when --count is not given: INT8 ranges settle within ~100 images of the target
# domain; FP16 needs only enough to find activations beyond FP16's range.
DEFAULT_COUNT = {'int8': 100, 'fp16': 16}
CACHE_FOLDER = '.calib_cache'


@dataclass(frozen=True)
class ConvertResult:
    """output: the written model; images: how many calibrated it; cache / cache_hit: INT8 only;
    kept_fp32: the model's modules (e.g. yolact.proto_net.10) whose convolutions stayed FP32, and
    convolutions_kept: how many convolutions that is (a shared head counts once per FPN level)."""

    output: Path
    images: int
    cache: Path | None = None
    cache_hit: bool = False
    kept_fp32: tuple[str, ...] = ()
    convolutions_kept: int = 0


def quiet_modelopt(quiet: bool = True) -> None:
    """Silence modelopt's log (quiet) or show its INFO lines. It logs INFO freely, and an ERROR when
    it finds no GPU to query, which is expected on a CPU host. Its modules set their loggers'
    levels when imported, so they are imported first."""
    import modelopt.onnx.autocast  # noqa: F401
    import modelopt.onnx.quantization  # noqa: F401

    for name in (MODELOPT_LOGGER, f'{MODELOPT_LOGGER}.autocast'):
        logging.getLogger(name).setLevel(logging.CRITICAL if quiet else logging.INFO)
        logging.getLogger(name).propagate = False  # it has its own console handler


def load_fp32_model(model_path: Path) -> onnx.ModelProto:
    """The exported FP32 model at `model_path`; CalibrationError for anything else."""
    if not model_path.is_file():
        raise CalibrationError(f'model {model_path} does not exist: export one first (make export)')
    try:
        model = onnx.load(model_path)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise CalibrationError(f'{model_path} is not an ONNX model ({type(e).__name__}): give the exported .onnx') from None
    precision = model_metadata(model).precision
    if precision != 'fp32':
        raise CalibrationError(f'{model_path} is already {precision}: convert the FP32 export instead')
    return model


def convert_model(model_path: str | os.PathLike, precision: str, images: str | os.PathLike, *,
                  count: int | None = None, method: str = 'entropy', keep_sensitive: bool = False,
                  keep_offsets: bool = KEEP_OFFSETS,
                  output: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  layout: str | None = None) -> ConvertResult:
    """Write the `precision` version of the FP32 model at `model_path`.

    images: folder or COCO JSON of calibration images; count: how many (default DEFAULT_COUNT,
    or all if fewer); method: INT8 calibration method (calib.quantize.CALIBRATION_METHODS);
    keep_sensitive: keep the prototype and mask-coefficient convolutions FP32; keep_offsets: keep
    YOLACT++'s offset/mask convolutions FP32 (calib.graph.kept_convolutions); output: default
    `runtime.artifacts.precision_path`;
    cache_dir: INT8 calibration cache folder (default .calib_cache beside the output); layout:
    INT8 Q/DQ layout (calib.quantize.LAYOUTS; default tensorrt).
    """
    if precision not in TARGET_PRECISIONS:
        raise CalibrationError(f'unknown precision {precision!r}: choose one of {", ".join(TARGET_PRECISIONS)} '
                               '(the exported model is the FP32 one)')
    if layout is not None and precision != 'int8':
        raise CalibrationError(f'--layout chooses where INT8 Q/DQ go; {precision} has none: leave it out')
    layout = layout or 'tensorrt'
    check_int8_options(method, layout)  # before the images are loaded
    model_path = Path(model_path)
    output = Path(output) if output is not None else precision_path(model_path, precision, layout)
    if output.resolve() == model_path.resolve():
        raise CalibrationError(f'--output {output} is the input model: choose another file name')
    if not output.parent.is_dir():
        raise CalibrationError(f'cannot write {output}: folder {output.parent} does not exist (create it first)')
    model = load_fp32_model(model_path)
    if count is None:
        count = min(DEFAULT_COUNT[precision], len(image_paths(images)))
    pixels = load_calibration_images(images, count)
    log.info('%s: %d calibration images from %s', precision, len(pixels), images)

    if precision == 'fp16':
        converted, result = convert_fp16(model, pixels, keep_sensitive=keep_sensitive, keep_offsets=keep_offsets), {}
    else:
        int8 = quantize_int8(model, pixels, method=method, keep_sensitive=keep_sensitive, keep_offsets=keep_offsets,
                             cache_dir=cache_dir if cache_dir is not None else output.parent / CACHE_FOLDER,
                             model_name=model_path.name.removesuffix('.onnx'), layout=layout)
        converted = int8.model
        result = dict(cache=int8.cache, cache_hit=int8.cache_hit, kept_fp32=int8.kept_fp32_modules,
                      convolutions_kept=len(int8.kept_fp32))
    try:
        check_model(converted)
        save_model(converted, output)
    except ExportError as e:
        raise CalibrationError(f'the {precision} model: {e}') from None
    return ConvertResult(output, len(pixels), **result)
