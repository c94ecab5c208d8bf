"""FP16 and INT8 rows for `make bench` (runtime/bench/cpu.py's ROW_SOURCES): onnxruntime network time of
each model's raw export as calib converted it (runtime.artifacts.precision_path beside
NAME.raw.onnx: NAME.raw.fp16.onnx, and INT8 in both of calib's layouts, NAME.raw.int8.onnx for
TensorRT and NAME.raw.int8-ort.onnx for onnxruntime), timed in rounds alternating with the FP32
network so a shared machine's load falls on all of them alike. The ratio to FP32 goes into the notes.

`make bench` converts them (python -m calib on the raw export); a missing one is left out with a note
naming the command.
"""

from __future__ import annotations

import numpy as np

from runtime.artifacts import precision_path
from runtime.contract import INPUT_NAME

ROUNDS = 3  # alternations of fp32 / fp16 / int8 / int8-ort timing
# Row label -> (calib's precision, its INT8 layout: None for calib's default, the TensorRT one).
VARIANTS = {'fp16': ('fp16', None), 'int8': ('int8', None), 'int8-ort': ('int8', 'onnxruntime')}


def variant_paths(raw_onnx) -> tuple[dict, list[str]]:
    """({label: path} of the VARIANTS of the raw export `raw_onnx` that exist, notes for those missing)."""
    paths, notes = {}, []
    for label, (precision, layout) in VARIANTS.items():
        path = precision_path(raw_onnx, precision, layout)
        if path.is_file():
            paths[label] = path
        else:
            flags = f' --layout {layout}' if layout else ''
            notes.append(f'{path.name} missing, its row left out: make bench converts it '
                         f'(python -m calib --model {raw_onnx} --precision {precision}{flags} --images IMAGES)')
    return paths, notes


def precision_rows(context) -> tuple[list[dict], list[str]]:
    """Rows (network stage only) for FP16 and both INT8 layouts, and notes with their ratio to FP32.

    context: runtime.bench.cpu.BenchContext.
    """
    from runtime.backends.ort_backend import create_session
    from runtime.bench.cpu import stage_row, timed

    rows, notes = [], []
    for model in context.models:
        variants, missing = variant_paths(model.raw_onnx)
        notes += missing
        if not variants:
            continue
        sessions = {p: create_session(path, num_threads=context.threads)
                    for p, path in {'fp32': model.raw_onnx, **variants}.items()}
        inputs = np.stack(context.images)  # at their own size, as the runtime feeds them
        for batch in context.batches:
            images = inputs[np.arange(batch) % len(inputs)]
            samples = {p: [] for p in sessions}
            for _ in range(ROUNDS):
                for precision, session in sessions.items():
                    samples[precision].append(timed(lambda: session.run(None, {INPUT_NAME: images}),
                                                    context.iterations, context.warmup, context.warmup_s))
            p50 = {p: float(np.median(np.concatenate(s))) for p, s in samples.items()}
            for precision in variants:
                row = stage_row({'network': np.concatenate(samples[precision])}, batch=batch, gmac=model.gmac,
                                matmul=context.matmul_gflops, model=model.label, backend='ort', precision=precision)
                del row['images_per_s']  # the network alone: not comparable with the full rows' img/s
                rows.append(row)
            ratios = ', '.join(f'{p} {p50[p] / p50["fp32"]:.2f}x' for p in variants)
            notes.append(f'{model.label} B={batch}: onnxruntime network p50 fp32 {p50["fp32"] * 1e3:.1f} ms, '
                         f'{ratios} of fp32 (timed in {ROUNDS} alternating rounds)')
    return rows, notes
