"""The artifact naming rule: where each stage writes what it makes, by default. The one home of the
rule that python -m export, python -m calib, python -m engines.build, the runtime's `auto` engine
choice and the benchmarks all follow (the Makefile spells the same names):

    build/NAME.onnx                      python -m export; NAME is the checkpoint's name up to its
                                         first dot; .cross_class / .raw before .onnx with
                                         --cross-class / --no-postprocess
    FOLDER/NAME.fp16.onnx, NAME.int8.onnx, NAME.int8-ort.onnx
                                         python -m calib, beside the FP32 model
    FOLDER/NAME.postprocess.onnx         python -m export.bench_artifacts postprocess, beside the raw export
                                         NAME.raw.onnx: the post-processing alone (the benchmark)
    FOLDER/NAME[.PRECISION].engine       python -m engines.build, beside the ONNX it was built from
"""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACT_FOLDER = Path('build')
CHECKPOINT_SUFFIXES = ('.pth', '.pt')


def export_path(checkpoint: str | os.PathLike, *, postprocess: bool = True, cross_class: bool = False) -> Path:
    """build/<checkpoint name up to its first dot>[.cross_class][.raw].onnx"""
    suffix = ('.cross_class' if cross_class else '') + ('' if postprocess else '.raw')
    return ARTIFACT_FOLDER / f'{Path(checkpoint).name.split(".")[0]}{suffix}.onnx'


def precision_path(model_path: str | os.PathLike, precision: str, layout: str | None = None) -> Path:
    """<folder>/<name>.<precision>.onnx beside the FP32 model (a trailing .fp32 in the name is dropped);
    <name>.int8-ort.onnx for calib's onnxruntime INT8 layout."""
    model_path = Path(model_path)
    stem = model_path.name.removesuffix('.onnx').removesuffix('.fp32')
    suffix = '-ort' if layout == 'onnxruntime' else ''
    return model_path.with_name(f'{stem}.{precision}{suffix}.onnx')


def postprocess_only_path(raw_model: str | os.PathLike) -> Path:
    """<folder>/<name>.postprocess.onnx beside the raw (--no-postprocess) export <name>.raw.onnx: the
    post-processing ops alone, for the raw export's shapes."""
    raw_model = Path(raw_model)
    return raw_model.with_name(f'{raw_model.name.removesuffix(".onnx").removesuffix(".raw")}.postprocess.onnx')


def engine_path(model: str | os.PathLike) -> Path:
    """The engine `make engine` builds for a model: for an ONNX file, the same name with .engine
    (build/demo.fp16.onnx -> build/demo.fp16.engine); for a checkpoint, that of its default export
    (build/NAME.onnx -> build/NAME.engine)."""
    model = Path(model)
    if model.suffix.lower() in CHECKPOINT_SUFFIXES:
        model = export_path(model)
    return model.with_suffix('.engine')
