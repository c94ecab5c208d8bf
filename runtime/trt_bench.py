"""The TensorRT rows of `make bench` (runtime/bench.py) on a GPU host: per engine (precision), batch
size and number of streams, the latency of a batch (p50/p99, from the moment it is handed to the
backend to the moment its detections are back on the host), images per second, and the GPU memory
the backend holds; plus the GPU, driver and TensorRT versions the table was measured with.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from runtime import cuda_mem
from runtime.backends.trt_backend import TrtBackend, import_tensorrt, trt_unavailable_reason

BATCH_SIZES = (1, 8, 32)
STREAM_COUNTS = (1, 2, 4)


def host_versions() -> dict[str, str]:
    """{'gpu', 'compute_capability', 'driver' (CUDA driver API version), 'cuda_runtime', 'tensorrt'}."""
    info = cuda_mem.device_info(0)
    return {'gpu': info['name'], 'compute_capability': info['compute_capability'], 'driver': info['driver'],
            'cuda_runtime': info['runtime'], 'tensorrt': import_tensorrt().version}


def measure(backend: TrtBackend, images: np.ndarray, batch: int, iterations: int, warmup: int) -> dict:
    """Run `iterations` batches of `batch` images (taken round-robin from `images`, uint8
    [N, H, W, 3] at the model size) through backend.infer_batches after `warmup` unmeasured ones.

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
    """Benchmark rows for every engine x batch size x stream count, and notes for what was left out
    (no TensorRT/GPU, a batch size above an engine's profile). Each row: 'backend' 'trt',
    'precision', 'model' (engine file name), the `measure` fields and 'gpu_memory_mb' (device memory
    in use with the backend loaded, minus what was in use before: engine, contexts, buffers)."""
    reason = trt_unavailable_reason()
    if reason is not None:
        return [], [f'TensorRT rows skipped: {reason}']
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
                    row.update(backend='trt', precision=backend.metadata.precision, model=Path(engine).name,
                               gpu_memory_mb=(cuda_mem.memory_in_use() - before) / 2 ** 20)
                    rows.append(row)
    return rows, notes
