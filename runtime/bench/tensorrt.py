"""The TensorRT rows of `make bench` (runtime/bench/cpu.py) on a GPU host: per engine (precision), batch
size and number of streams, the latency of a batch (p50/p99, from the moment it is handed to the
backend to the moment its detections are back on the host: upload of model-size uint8 images,
inference with Fast NMS and mask assembly, the num_dets-trimmed download), images per second, and
the GPU memory the backend holds; plus the GPU, driver and TensorRT versions the table was measured
with. The engines are those `make bench` built for each benchmarked model (build/NAME[.PRECISION].engine,
runtime.artifacts.engine_path of its checkpoint).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from runtime.artifacts import engine_path, export_path, precision_path
from runtime.cuda import memory as cuda_mem
from runtime.cuda.device import device_info
from runtime.metadata import PRECISIONS
from runtime.tensorrt.backend import TrtBackend, import_tensorrt, trt_unavailable_reason

BATCH_SIZES = (1, 8, 32)
STREAM_COUNTS = (1, 2, 4)


def host_versions() -> dict[str, str]:
    """{'gpu', 'compute_capability', 'driver' (CUDA driver API version), 'cuda_runtime', 'tensorrt'}."""
    info = device_info(0)
    return {'gpu': info['name'], 'compute_capability': info['compute_capability'], 'driver': info['driver'],
            'cuda_runtime': info['runtime'], 'tensorrt': import_tensorrt().version}


def measure(backend: TrtBackend, images: np.ndarray, batch: int, iterations: int, warmup: int) -> dict:
    """Run `iterations` batches of `batch` images (taken round-robin from `images`, uint8
    [N, H, W, 3], one size: the engine resizes) through backend.infer_batches after `warmup` unmeasured ones.

    Returns {'batch', 'streams', 'latency_p50_ms', 'latency_p99_ms', 'images_per_s'}. Latency is per
    batch, from when the scheduler takes it to when its RawDetections are returned; with several
    streams batches overlap, so latency grows while images/s should too.
    """
    index = np.arange(batch * (iterations + warmup)) % len(images)
    batches = [np.ascontiguousarray(images[index[i * batch:(i + 1) * batch]]) for i in range(iterations + warmup)]
    taken: list[float] = []

    def timed(items) -> Iterator[np.ndarray]:
        for item in items:
            taken.append(time.perf_counter())
            yield item

    for _ in backend.infer_batches(batches[:warmup]):
        pass
    latencies = []
    start = time.perf_counter()
    for k, _ in enumerate(backend.infer_batches(timed(batches[warmup:]))):
        latencies.append(time.perf_counter() - taken[k])
    elapsed = time.perf_counter() - start
    return {'batch': batch, 'streams': backend.streams,
            'latency_p50_ms': float(np.percentile(latencies, 50) * 1e3),
            'latency_p99_ms': float(np.percentile(latencies, 99) * 1e3),
            'images_per_s': batch * iterations / elapsed}


def trt_rows(engines: Sequence[str | Path], images: np.ndarray, *, batch_sizes=BATCH_SIZES,
             stream_counts=STREAM_COUNTS, iterations: int = 50, warmup: int = 5) -> tuple[list[dict], list[str]]:
    """Benchmark rows for every engine x batch size x stream count, and notes for the batch sizes
    above an engine's profile (left out). images: uint8 [N, H, W, 3], one size. Each row:
    'backend' 'trt', 'precision', the `measure` fields and 'gpu_memory_mb' (device memory in use
    with the backend loaded, minus what was in use before: engine, contexts, buffers)."""
    rows, notes = [], []
    for engine in engines:
        for streams in stream_counts:
            before = cuda_mem.memory_in_use()
            with TrtBackend(engine, streams=streams) as backend:
                for batch in batch_sizes:
                    if batch > backend.max_batch:
                        if streams == stream_counts[0]:
                            notes.append(f'{Path(engine).name}: batch {batch} skipped, the engine profile ends at '
                                         f'{backend.max_batch} (make engine MAX_BATCH={batch})')
                        continue
                    row = measure(backend, images, batch, iterations, warmup)
                    row.update(backend='trt', precision=backend.metadata.precision,
                               gpu_memory_mb=(cuda_mem.memory_in_use() - before) / 2 ** 20)
                    rows.append(row)
    return rows, notes


def model_engines(checkpoint: str | Path) -> list[Path]:
    """The engines `make bench` (or `make engine`) built for a checkpoint's export, one per precision,
    that exist."""
    export = export_path(checkpoint)
    candidates = [engine_path(export)] + [engine_path(precision_path(export, precision))
                                          for precision in PRECISIONS if precision != 'fp32']
    return [path for path in candidates if path.is_file()]


def bench_rows(context) -> tuple[list[dict], list[str]]:
    """runtime.bench.cpu row source (ROW_SOURCES): TensorRT rows for every model of the bench context
    (runtime.bench.cpu.BenchContext) that has engines, batch sizes BATCH_SIZES, streams STREAM_COUNTS."""
    reason = trt_unavailable_reason()
    if reason is not None:
        return [], [f'TensorRT rows skipped: {reason}']
    rows, notes = [], []
    versions = host_versions()
    notes.append('TensorRT rows: {gpu} (compute capability {compute_capability}), CUDA driver {driver}, '
                 'CUDA runtime {cuda_runtime}, TensorRT {tensorrt}'.format(**versions))
    for model in context.models:
        engines = model_engines(model.checkpoint)
        if not engines:
            notes.append(f'{model.label}: no TensorRT engine {engine_path(model.checkpoint)}: make bench builds the '
                         f'engines where TensorRT and a GPU are present (max batch {max(BATCH_SIZES)})')
            continue
        images = np.stack(context.images)  # at their own size, IMAGE_HW: the engine resizes
        model_rows, model_notes = trt_rows(engines, images, iterations=context.iterations, warmup=context.warmup)
        for row in model_rows:
            row['model'] = model.label
        rows += model_rows
        notes += model_notes
    return rows, notes
