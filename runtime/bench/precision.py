"""FP16 and INT8 rows for `make bench` (runtime/bench/cpu.py's ROW_SOURCES): onnxruntime network time of
each model's raw export converted by calib (INT8 in both of calib's layouts: int8 for TensorRT,
int8-ort for onnxruntime), timed in rounds alternating with the FP32 network so a shared machine's
load falls on all of them alike. The ratio to FP32 goes into the notes.

The converted networks are kept beside the raw export and rebuilt when it is newer. Calibration
uses the bench's own images: the speed of a network does not depend on its ranges.
"""

from __future__ import annotations

import numpy as np
import onnx

from calib.convert import CACHE_FOLDER, quiet_modelopt
from calib.fp16 import convert_fp16
from calib.quantize import quantize_int8
from export.onnx_export import save_model
from runtime.artifacts import precision_path
from runtime.contract import INPUT_NAME

ROUNDS = 3  # alternations of fp32 / fp16 / int8 / int8-ort timing
# Row label -> calib's INT8 layout (None: FP16).
VARIANTS = {'fp16': None, 'int8': 'tensorrt', 'int8-ort': 'onnxruntime'}


def converted_network(raw_onnx, precision: str, calibration: np.ndarray):
    """Path of the `precision` (a VARIANTS label) version of the raw export `raw_onnx`, converting it
    when missing or stale.

    calibration: uint8 [N, H, W, 3] BGR images at the model's input size.
    """
    layout = VARIANTS[precision]
    output = precision_path(raw_onnx, 'fp16' if layout is None else 'int8', layout)
    if output.is_file() and output.stat().st_mtime >= raw_onnx.stat().st_mtime:
        return output
    quiet_modelopt()
    model = onnx.load(raw_onnx)
    if precision == 'fp16':
        converted = convert_fp16(model, calibration)
    else:
        converted = quantize_int8(model, calibration, cache_dir=raw_onnx.parent / CACHE_FOLDER,
                                  model_name=raw_onnx.stem, layout=layout).model
    save_model(converted, output)
    return output


def precision_rows(context) -> tuple[list[dict], list[str]]:
    """Rows (network stage only) for FP16 and both INT8 layouts, and notes with their ratio to FP32.

    context: runtime.bench.cpu.BenchContext.
    """
    from runtime.backends.ort_backend import create_session
    from runtime.bench.cpu import stage_row, timed

    rows, notes = [], []
    for model in context.models:
        calibration = np.stack(context.images)  # at their own size, as the runtime feeds them
        paths = {'fp32': model.raw_onnx}
        paths.update({p: converted_network(model.raw_onnx, p, calibration) for p in VARIANTS})
        sessions = {p: create_session(path, num_threads=context.threads) for p, path in paths.items()}
        for batch in context.batches:
            images = calibration[np.arange(batch) % len(calibration)]
            samples = {p: [] for p in sessions}
            for _ in range(ROUNDS):
                for precision, session in sessions.items():
                    samples[precision].append(timed(lambda: session.run(None, {INPUT_NAME: images}),
                                                    context.iterations, context.warmup, context.warmup_s))
            p50 = {p: float(np.median(np.concatenate(s))) for p, s in samples.items()}
            for precision in VARIANTS:
                row = stage_row({'network': np.concatenate(samples[precision])}, batch=batch, gmac=model.gmac,
                                matmul=context.matmul_gflops, model=model.label, backend='ort', precision=precision)
                del row['images_per_s']  # the network alone: not comparable with the full rows' img/s
                rows.append(row)
            ratios = ', '.join(f'{p} {p50[p] / p50["fp32"]:.2f}x' for p in VARIANTS)
            notes.append(f'{model.label} B={batch}: onnxruntime network p50 fp32 {p50["fp32"] * 1e3:.1f} ms, '
                         f'{ratios} of fp32 (timed in {ROUNDS} alternating rounds)')
    return rows, notes
