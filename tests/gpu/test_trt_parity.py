"""TensorRT engines of the demo model against onnxruntime FP32 and the torch reference, per
precision, per-class and cross-class, at batch 1 and at the engine profile's maximum; and the
backend's sidecar refusals and throughput mode on a real GPU. Runs on GPU runners (gpu.yml)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from engines.sidecar import write_sidecar
from runtime.backends import open_backend
from runtime.tensorrt.sidecar import EngineMismatchError, read_sidecar, sidecar_path
from tests.gpu.artifacts import (CHECKPOINT, MAX_BATCH, engine_for, how_to_make, onnx_path, require_file,
                                 shapes_images)
from tests.gpu.compare import assert_equal_detections, assert_same_confident_detections, drill_down

pytestmark = pytest.mark.gpu
MODES = {'per_class': False, 'cross_class': True}


def infer_each(backend, images: np.ndarray) -> dict:
    """Batch-1 calls, joined along B."""
    parts = [backend.infer(images[i:i + 1]) for i in range(len(images))]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@pytest.fixture(scope='module')
def images():
    return shapes_images(MAX_BATCH)


@pytest.fixture(scope='module')
def ort_reference(images):
    """onnxruntime FP32 outputs per mode, one image per call (batching cannot change them)."""
    cache = {}

    def get(cross_class: bool):
        if cross_class not in cache:
            model = require_file(onnx_path('fp32', cross_class), how_to_make('fp32', cross_class))
            with open_backend(model, 'ort') as ort:
                cache[cross_class] = infer_each(ort, images), ort.metadata
        return cache[cross_class]
    return get


def trt_outputs(precision: str, cross_class: bool, images: np.ndarray, batch: str) -> dict:
    with open_backend(engine_for(precision, cross_class), 'trt') as trt:
        assert trt.max_batch == MAX_BATCH
        return infer_each(trt, images) if batch == '1' else trt.infer(images)


@pytest.mark.parametrize('batch', ['1', 'max'])
@pytest.mark.parametrize('mode', MODES)
def test_fp32_engine_equals_onnxruntime(mode, batch, images, ort_reference):
    ref, meta = ort_reference(MODES[mode])
    got = trt_outputs('fp32', MODES[mode], images, batch)
    assert ref['num_dets'].sum() > 0, 'the demo model should detect shapes, or this test proves little'
    hint = drill_down(onnx_path('fp32', MODES[mode]), f'fp32 engine vs onnxruntime, {mode}, batch {batch}')
    assert_equal_detections(got, ref, meta.mask_threshold, hint)


@pytest.mark.parametrize('mode', MODES)
def test_fp32_engine_equals_torch(mode, images):
    require_file(CHECKPOINT, 'make train-demo')
    with open_backend(CHECKPOINT, 'torch', cross_class=MODES[mode]) as torch_backend:
        ref = infer_each(torch_backend, images)
        meta = torch_backend.metadata
    got = trt_outputs('fp32', MODES[mode], images, 'max')
    assert_equal_detections(got, ref, meta.mask_threshold,
                            drill_down(onnx_path('fp32', MODES[mode]), f'fp32 engine vs torch, {mode}'))


@pytest.mark.parametrize('batch', ['1', 'max'])
@pytest.mark.parametrize('mode', MODES)
def test_fp16_engine_keeps_confident_detections(mode, batch, images, ort_reference):
    ref, meta = ort_reference(MODES[mode])
    got = trt_outputs('fp16', MODES[mode], images, batch)
    compared = assert_same_confident_detections(
        got, ref, meta.mask_threshold, drill_down(onnx_path('fp16', MODES[mode]),
                                                  f'fp16 engine vs onnxruntime fp32, {mode}, batch {batch}'))
    assert compared > 0, 'no detection above 0.3: the comparison proved nothing'


@pytest.mark.parametrize('streams, graphs', [(1, True), (2, False), (2, True), (4, True)])
def test_streams_and_graphs_give_the_sequential_result(streams, graphs, images):
    engine = engine_for('fp16', False)
    # Batches of 3 with a partial last one, then of 1: graphs are captured, dropped and recaptured.
    batches = [images[i:i + 3] for i in range(0, len(images), 3)] + [images[i:i + 1] for i in range(len(images))]
    with open_backend(engine, 'trt', cuda_graphs=False) as trt:
        meta = trt.metadata
        sequential = [trt.infer(b) for b in batches]
    with open_backend(engine, 'trt', streams=streams, cuda_graphs=graphs) as trt:
        results = list(trt.infer_batches(batches))
    assert len(results) == len(batches)
    for i, (got, ref) in enumerate(zip(results, sequential)):
        assert_equal_detections(got, ref, meta.mask_threshold,
                                f'{streams} stream(s), graphs {"on" if graphs else "off"}, batch #{i}')


def copy_engine(tmp_path, engine):
    target = tmp_path / engine.name
    shutil.copyfile(engine, target)
    shutil.copyfile(sidecar_path(engine), sidecar_path(target))
    return target


def test_engine_from_another_gpu_is_refused(tmp_path):
    engine = copy_engine(tmp_path, engine_for('fp32', False))
    sidecar = read_sidecar(engine)
    other = sidecar.engine.__class__(**{**sidecar.engine.__dict__, 'build_gpu': 'NVIDIA Some Other GPU'})
    write_sidecar(engine, sidecar.__class__(sidecar.metadata, other))
    with pytest.raises(EngineMismatchError, match='NVIDIA Some Other GPU.*make engine'):
        open_backend(engine, 'trt')


def test_corrupted_engine_is_refused(tmp_path):
    engine = copy_engine(tmp_path, engine_for('fp32', False))
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match='checksum differs.*make engine'):
        open_backend(engine, 'trt')


def test_close_frees_device_memory(images):
    from runtime.cuda.memory import memory_in_use

    engine = engine_for('fp16', False)
    with open_backend(engine, 'trt', streams=2) as trt:  # first use creates the CUDA context
        list(trt.infer_batches([images, images[:1]]))
    before = memory_in_use()
    with open_backend(engine, 'trt', streams=2) as trt:
        list(trt.infer_batches([images, images[:1]]))
        assert memory_in_use() > before
    leaked = memory_in_use() - before
    assert leaked < 16 << 20, f'{leaked / 2**20:.1f} MiB still in use after close()'
