"""The models the GPU tests run: the demo model's ONNX exports (per-class and cross-class, FP32 and
their FP16/INT8 conversions) made by the GPU workflow (.github/workflows/gpu.yml), and TensorRT
engines built from them on demand. Names follow `python -m export`, `python -m calib` and
`make engine`: build/NAME[.cross_class][.PRECISION].onnx -> the same name with .engine.

YOLACT_BUILD_DIR points elsewhere than build/; YOLACT_GPU_MAX_BATCH sets the profile maximum of
engines built here (default 8; the workflow builds with 32 for the benchmark).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from runtime.assets import DEMO_MODEL

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get('YOLACT_BUILD_DIR', ROOT / 'build'))
DEMO_NAME = 'yolact_tiny_shapes'
CHECKPOINT = DEMO_MODEL
# The evaluation split of the synthetic shapes set (python -m yolact_torch.data.shapes --out build/shapes ...).
SHAPES_VAL = BUILD / 'shapes' / 'val.json'
MAX_BATCH = int(os.environ.get('YOLACT_GPU_MAX_BATCH', '8'))


def onnx_path(precision: str, cross_class: bool) -> Path:
    mode = '.cross_class' if cross_class else ''
    return BUILD / f'{DEMO_NAME}{mode}{"" if precision == "fp32" else "." + precision}.onnx'


def how_to_make(precision: str, cross_class: bool) -> str:
    steps = ['make export' + (' EXPORT_FLAGS=--cross-class' if cross_class else '')]
    if precision != 'fp32':
        steps.append(f'make calib MODEL={onnx_path("fp32", cross_class)} PRECISION={precision}')
    return ' && '.join(steps)


def require_file(path: Path, how: str) -> Path:
    """A GPU test whose input is missing fails (it must not pass by skipping): say how to make it."""
    if not path.is_file():
        pytest.fail(f'{path} is missing; make it with: {how} (the GPU workflow does)', pytrace=False)
    return path


def engine_for(precision: str, cross_class: bool) -> Path:
    """The engine of that model for this host, batch profile 1..MAX_BATCH: the one `make engine`
    built when its sidecar matches (the builder reuses it), else built now."""
    from engines.build import build_engine

    model = require_file(onnx_path(precision, cross_class), how_to_make(precision, cross_class))
    engine, _ = build_engine(model, model.with_suffix('.engine'), max_batch=MAX_BATCH, precision=precision)
    return engine


def shapes_images(count: int, seed: int = 7) -> np.ndarray:
    """`count` images of the synthetic shapes set the demo model was trained on, uint8
    [count, S, S, 3] BGR at their own size, as the runtime feeds them (the model resizes)."""
    from yolact_torch.data.shapes import generate_image

    rng = np.random.default_rng(seed)
    return np.stack([generate_image(rng)[0] for _ in range(count)])
