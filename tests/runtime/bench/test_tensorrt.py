"""The TensorRT benchmark rows: what a measurement reports, run on the simulated device of
test_trt_lanes (no timing is asserted), and what a host without TensorRT gets."""

import numpy as np
import pytest

from runtime.bench.tensorrt import bench_rows, measure, model_engines
from tests.runtime.tensorrt.test_lanes import make_backend, random_images, sim  # noqa: F401 (sim is a fixture)


def test_measure_reports_latency_and_throughput_fields(sim):  # noqa: F811
    backend = make_backend(sim, streams=2)
    images = random_images(np.random.default_rng(0), 3)
    row = measure(backend, images, batch=2, iterations=5, warmup=1)
    backend.close()
    assert set(row) == {'batch', 'streams', 'latency_p50_ms', 'latency_p99_ms', 'images_per_s'}
    assert (row['batch'], row['streams']) == (2, 2)
    assert 0 < row['latency_p50_ms'] <= row['latency_p99_ms']
    assert row['images_per_s'] > 0
    assert sim.executions == 6  # warm-up + measured batches, each run once


def test_bench_source_on_a_host_without_tensorrt():
    from runtime.tensorrt.backend import trt_unavailable_reason

    reason = trt_unavailable_reason()
    if reason is None:
        pytest.skip('TensorRT and a GPU are present: the gpu workflow\'s make bench measures the rows')
    rows, notes = bench_rows(object())  # the context is not looked at
    assert rows == [] and notes == [f'TensorRT rows skipped: {reason}']


def test_model_engines_are_make_engine_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'build').mkdir()
    assert model_engines('runtime/assets/yolact_tiny_shapes.pth') == []
    for name in ('yolact_tiny_shapes.int8.engine', 'yolact_tiny_shapes.engine', 'other.fp16.engine'):
        (tmp_path / 'build' / name).write_bytes(b'')
    assert [p.as_posix() for p in model_engines('runtime/assets/yolact_tiny_shapes.pth')] == [
        'build/yolact_tiny_shapes.engine', 'build/yolact_tiny_shapes.int8.engine']
