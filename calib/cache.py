"""The calibration cache: activation ranges from one calibration run, kept for the next.

Calibration (running N images through the network and fitting a range per tensor) is the slow
part of INT8 conversion; quantising with ranges already at hand takes a second. The cache file is
keyed by a digest of the network graph and weights, the pre-processed calibration pixels and the
method, so any change to the model, the images, their number or the method calibrates afresh.

The file is in TensorRT's calibration-cache text format, which modelopt reads
(`calibration_cache_path`): a header line, then `tensor_name: <scale as big-endian float32 hex>`,
with scale = amax / 127 (symmetric INT8).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from runtime.files import write_atomic

CACHE_HEADER = 'TRT-8501-EntropyCalibration2'
INT8_MAX = 127
# A tensor that was all zeros in calibration would get scale 0 and divide by zero in
# QuantizeLinear; the smallest normal float16 keeps the scale valid for FP16 Q/DQ scales too.
MIN_AMAX = float(np.finfo(np.float16).tiny) * INT8_MAX


def calibration_key(network: onnx.ModelProto, images: Sequence[np.ndarray], method: str) -> str:
    """Hex digest of what determines the calibration result.

    network: the model part that is calibrated; images: uint8 [H, W, 3] each, at its own size, as
    fed to it (the graph resizes them), so each image's size counts as well as its pixels; read one
    at a time (calib.images.CalibrationImages loads each when asked).
    """
    digest = hashlib.sha256()
    digest.update(network.SerializeToString(deterministic=True))
    digest.update(repr((len(images), method)).encode())
    for image in images:
        digest.update(repr((image.shape, str(image.dtype))).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def cache_file(cache_dir: str | os.PathLike, model_name: str, method: str, key: str) -> Path:
    """Where the calibration for `key` lives: <cache_dir>/<model_name>.<method>.<key[:16]>.calib."""
    return Path(cache_dir) / f'{model_name}.{method}.{key[:16]}.calib'


def write_cache(path: Path, amax: dict[str, float]) -> None:
    """Write `amax` (tensor name -> largest absolute value to represent) atomically."""
    lines = [CACHE_HEADER]
    for name, value in sorted(amax.items()):
        scale = max(float(value), MIN_AMAX) / INT8_MAX
        lines.append(f'{name}: {struct.pack("!f", scale).hex()}')
    write_atomic(path, ('\n'.join(lines) + '\n').encode())


def read_amax(path: Path) -> dict[str, float]:
    """The ranges `write_cache` wrote (tensor name -> amax), for placements that take ranges rather
    than this file."""
    lines = Path(path).read_text().splitlines()[1:]
    return {name: struct.unpack('!f', bytes.fromhex(scale.strip()))[0] * INT8_MAX
            for name, scale in (line.rsplit(':', 1) for line in lines if line.strip())}


def cache_problem(path: Path, needed: list[str]) -> str | None:
    """Why the cache file at `path` cannot give the ranges of a network whose quantised layers read
    the tensors `needed`, or None when it can: it must have the header, a range for each of them,
    and only finite positive ranges (write_cache writes nothing else)."""
    try:
        header = Path(path).read_text().split('\n', 1)[0]
        amax = read_amax(path)
    except (OSError, UnicodeDecodeError, ValueError, struct.error) as e:
        return f'unreadable ({type(e).__name__})'
    if header != CACHE_HEADER:
        return f'its first line is not {CACHE_HEADER}'
    missing = [name for name in needed if name not in amax]
    if missing:
        return f'no range for {len(missing)} of the {len(needed)} tensors the network needs ({missing[0]}, ...)'
    invalid = [name for name, value in amax.items() if not (math.isfinite(value) and value > 0)]
    if invalid:
        return f'ranges that are not finite and positive ({invalid[0]}, ...)'
    return None
