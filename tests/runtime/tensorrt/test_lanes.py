"""The TensorRT backend's lanes on a simulated device: host memory stands in for device memory,
a stream runs its work at once (or records it while a CUDA graph is captured), and an execution
context computes known outputs from the uploaded images. This runs the backend's real buffer,
upload, graph, scheduling and trimmed-download code on the CPU; what it cannot show (TensorRT's and
CUDA's own behaviour) the gpu tests in tests/gpu/ do."""

import ctypes

import numpy as np
import pytest

from yolact_torch.config import get_config, metadata_from_config
from runtime.backends.base import BackendError
from runtime.contract import BOX_SCORES
from runtime.cuda import memory as cuda_mem
from runtime.metadata import ModelMetadata
from runtime.tensorrt import backend as trt_backend
from runtime.tensorrt.backend import TrtBackend, _Lane
from runtime.tensorrt.engine_io import EngineIO, EngineIOError, TensorSpec

D, HP, SIZE = 6, 5, 8
META = metadata_from_config(get_config('yolact_base'), max_dets=D)
META = ModelMetadata.from_dict(dict(META.to_dict(), input_size=(SIZE, SIZE)))
IO = EngineIO((
    TensorSpec('images', np.dtype(np.uint8), (-1, -1, -1, 3), True),
    TensorSpec('num_dets', np.dtype(np.int32), (-1,), False),
    TensorSpec('boxes', np.dtype(np.float32), (-1, D, 4), False),
    TensorSpec('scores', np.dtype(np.float32), (-1, D), False),
    TensorSpec('classes', np.dtype(np.int32), (-1, D), False),
    TensorSpec('masks', np.dtype(np.float16), (-1, D, HP, HP), False),
), 1, 2, 4, (SIZE, SIZE), (SIZE, SIZE), (4 * SIZE, 4 * SIZE))
# A YOLACT++ engine: the contract's outputs and box_scores.
PLUS_IO = EngineIO(IO.tensors + (TensorSpec(BOX_SCORES, np.dtype(np.float32), (-1, D), False),),
                   1, 2, 4, (SIZE, SIZE), (SIZE, SIZE), (4 * SIZE, 4 * SIZE))
GARBAGE = 77  # what the simulated engine writes into padding rows


def memory_at(ptr, nbytes):
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))


def expected_outputs(images):
    """What the simulated engine computes: image i (first pixel v) has v % (D + 1) detections
    whose values encode (v, row); padding rows hold GARBAGE. box_scores, for the engines that have
    it, differ from the scores."""
    b = len(images)
    first = images[:, 0, 0, 0].astype(np.int64)
    rows = np.arange(D)
    out = {'num_dets': (first % (D + 1)).astype(np.int32),
           'boxes': np.stack([first[:, None] + 0 * rows, rows + 0 * first[:, None],
                              images[:, 1, 1, 1][:, None] + 0 * rows, np.ones((b, D))], -1).astype(np.float32),
           'scores': (first[:, None] + rows / 10).astype(np.float32),
           'classes': (rows % 3 + 0 * first[:, None]).astype(np.int32),
           'masks': np.broadcast_to((first[:, None] + rows)[:, :, None, None] / 256, (b, D, HP, HP)).astype(np.float16),
           BOX_SCORES: (first[:, None] + rows / 10 + 0.05).astype(np.float32)}
    valid = rows[None, :] < out['num_dets'][:, None]
    for name in ('boxes', 'scores', 'classes', 'masks', BOX_SCORES):
        out[name][~valid] = GARBAGE
    return out, valid


class SimDevice:
    """State of the simulated GPU: live allocations, streams, bytes copied back."""

    def __init__(self):
        self.live, self.streams = set(), {}
        self.downloaded = 0
        self.executions = 0
        self.capture_fails = False


@pytest.fixture
def sim(monkeypatch):
    dev = SimDevice()

    class SimDeviceBuffer:
        def __init__(self, nbytes):
            self.nbytes = nbytes
            self._array = np.full(max(nbytes, 1), 0xCD, np.uint8)  # uninitialised device memory
            self.ptr = self._array.ctypes.data
            dev.live.add(self)

        def free(self):
            dev.live.discard(self)
            self.ptr = 0

    class SimPinnedBuffer(cuda_mem.PinnedBuffer):
        def __init__(self, nbytes):
            self.nbytes = nbytes
            self._bytes = np.full(max(nbytes, 1), 0xEF, np.uint8)
            self.ptr = self._bytes.ctypes.data
            dev.live.add(self)

        def free(self):
            dev.live.discard(self)
            self.ptr, self._bytes = 0, None

    class SimStream:
        def __init__(self):
            self.recording = None
            dev.streams[self.ptr] = self
            dev.live.add(self)

        @property
        def ptr(self):
            return id(self)

        def run(self, op):
            if self.recording is not None:
                self.recording.append(op)
            else:
                op()

        def copy_to_device(self, device_ptr, host_ptr, nbytes):
            self.run(lambda: ctypes.memmove(device_ptr, host_ptr, nbytes))

        def copy_to_host(self, host_ptr, device_ptr, nbytes):
            def op():
                dev.downloaded += nbytes
                ctypes.memmove(host_ptr, device_ptr, nbytes)
            self.run(op)

        def synchronize(self):
            pass

        def free(self):
            dev.live.discard(self)

    class SimGraph:
        def __init__(self, stream, record):
            stream.recording = []
            try:
                record()
            finally:
                self.ops, stream.recording = stream.recording, None
            if dev.capture_fails:
                raise cuda_mem.CudaError('cudaStreamEndCapture failed: cudaErrorStreamCaptureUnsupported')
            dev.live.add(self)

        def launch(self):
            for op in self.ops:
                op()

        def free(self):
            dev.live.discard(self)

    monkeypatch.setattr(cuda_mem, 'DeviceBuffer', SimDeviceBuffer)
    monkeypatch.setattr(cuda_mem, 'PinnedBuffer', SimPinnedBuffer)
    monkeypatch.setattr(cuda_mem, 'Stream', SimStream)
    monkeypatch.setattr(cuda_mem, 'CudaGraph', SimGraph)
    return dev


class SimContext:
    """An IExecutionContext of an engine with I/O `io`: computes expected_outputs from the bytes at
    the input address and writes those of the engine's outputs."""

    def __init__(self, dev, io):
        self.dev, self.io, self.addresses, self.shape = dev, io, {}, None

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def set_input_shape(self, name, shape):
        assert name == 'images'
        self.shape = tuple(shape)
        return True

    def execute_async_v3(self, stream_ptr):
        shape, addresses = self.shape, dict(self.addresses)  # bound at enqueue, as TensorRT does

        def op():
            self.dev.executions += 1
            images = memory_at(addresses['images'], int(np.prod(shape))).reshape(shape)
            outputs, _ = expected_outputs(images)
            for spec in self.io.tensors:
                if spec.is_input:
                    continue
                value = np.ascontiguousarray(outputs[spec.name].astype(spec.dtype))
                name = spec.name
                memory_at(addresses[name], value.nbytes)[:] = value.view(np.uint8).reshape(-1)
        self.dev.streams[stream_ptr].run(op)
        return True


class SimEngine:
    def __init__(self, dev, io):
        self.dev, self.io, self.contexts = dev, io, []

    def create_execution_context(self):
        self.contexts.append(SimContext(self.dev, self.io))
        return self.contexts[-1]


def make_backend(dev, streams=1, graphs=True, max_batch=None, io=IO):
    """A TrtBackend whose load() was done by hand with the simulated engine of I/O `io`."""
    backend = TrtBackend('sim.engine', streams=streams, cuda_graphs=graphs)
    backend.metadata, backend.io = META, io
    backend.max_batch = max_batch or io.max_batch
    backend._engine = SimEngine(dev, io)
    backend._lanes = [_Lane(backend._engine, io, graphs) for _ in range(streams)]
    backend.is_loaded = True
    return backend


def random_images(rng, batch, size=(SIZE, SIZE)):
    return rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)


def assert_trimmed(raw, images, io=IO):
    expected, valid = expected_outputs(images)
    np.testing.assert_array_equal(raw['num_dets'], expected['num_dets'])
    assert sorted(raw) == sorted(s.name for s in io.tensors if not s.is_input)
    for name in io.detection_outputs:
        assert raw[name].dtype == (np.int32 if name == 'classes' else np.float32)
        np.testing.assert_array_equal(raw[name][valid], expected[name][valid].astype(raw[name].dtype))
        assert not raw[name][~valid].any(), f'{name}: padding rows must be zero'


@pytest.mark.parametrize('io', [IO, PLUS_IO], ids=['yolact', 'yolact++'])
def test_infer_downloads_only_real_rows(sim, io):
    """Of every output the engine has (box_scores too, in a YOLACT++ engine), only the real rows;
    the batch of 3 runs as 2 + 1 and is joined again."""
    rng = np.random.default_rng(1)
    backend = make_backend(sim, graphs=False, io=io, max_batch=2)
    images = random_images(rng, 3)
    images[:, 0, 0, 0] = [2, 0, D]  # 2, 0 and D detections
    raw = backend.infer(images)
    assert_trimmed(raw, images, io)
    row_bytes = sum(io[n].row_nbytes for n in io.detection_outputs)
    assert sim.downloaded == 3 * 4 + (2 + 0 + D) * row_bytes
    assert set(backend._lanes[0].context.addresses) == {s.name for s in io.tensors}
    backend.close()
    assert not sim.live, 'close() must free every buffer, stream and graph'


@pytest.mark.parametrize('io', [IO, PLUS_IO], ids=['yolact', 'yolact++'])
def test_detect_carries_box_scores_where_the_engine_has_them(sim, io):
    """detect (masks pasted on the host here): a YOLACT++ engine's Detections carry its box_scores
    of the kept rows, in their order; a YOLACT engine's have none."""
    rng = np.random.default_rng(6)
    backend = make_backend(sim, graphs=False, io=io)
    images = random_images(rng, 2)
    images[:, 0, 0, 0] = [D, 2 * D + 1]  # D detections each, scores D + row / 10 and 2D + 1 + row / 10
    expected, _ = expected_outputs(images)
    threshold = D + 0.25  # image 0 keeps its last 3 rows, image 1 all
    found = backend.detect(images, [(SIZE, SIZE)] * 2, score_threshold=threshold, mask_threshold=0.5)
    for b, dets in enumerate(found):
        keep = np.flatnonzero(expected['scores'][b, :expected['num_dets'][b]] >= np.float32(threshold))
        np.testing.assert_array_equal(dets.scores, expected['scores'][b, keep])
        if io is PLUS_IO:
            np.testing.assert_array_equal(dets.box_scores, expected[BOX_SCORES][b, keep])
        else:
            assert dets.box_scores is None
    assert [len(dets) for dets in found] == [3, D]
    backend.close()
    assert not sim.live


def test_graph_is_captured_then_replayed_with_new_inputs(sim):
    rng = np.random.default_rng(2)
    backend = make_backend(sim)
    lane = backend._lanes[0]
    for step in range(4):
        images = random_images(rng, 2)
        assert_trimmed(backend.infer(images), images)
        assert (lane.graph is not None) == (step >= 1), step
    assert sim.executions == 4  # capture records the work, it runs once per launch
    # another batch size drops the graph (it is bound to the input shape)
    images = random_images(rng, 3)
    assert_trimmed(backend.infer(images), images)
    assert lane.graph is None and lane.context.shape == (3, SIZE, SIZE, 3)
    backend.close()
    assert not sim.live


def test_failed_capture_falls_back_to_eager(sim):
    sim.capture_fails = True
    rng = np.random.default_rng(3)
    backend = make_backend(sim)
    for _ in range(3):
        images = random_images(rng, 1)
        assert_trimmed(backend.infer(images), images)
    assert backend._lanes[0].graph is None and sim.executions == 3
    backend.close()


def test_growing_batch_reallocates_and_rebinds(sim):
    rng = np.random.default_rng(4)
    backend = make_backend(sim)
    lane = backend._lanes[0]
    for batch in (1, 1, 4, 2):
        images = random_images(rng, batch)
        assert_trimmed(backend.infer(images), images)
    assert lane.capacity == 4
    assert lane.context.addresses == {name: buf.ptr for name, buf in lane.device.items()}
    backend.close()


def test_images_go_in_at_their_own_size(sim):
    """Each batch at its own (H, W) inside the profile: the input shape follows it, a larger image
    grows the input buffer, a graph is bound to one shape; below the minimum is enlarged, above
    the maximum refused."""
    rng = np.random.default_rng(5)
    backend = make_backend(sim)
    lane = backend._lanes[0]
    for size in [(SIZE, 3 * SIZE), (SIZE, 3 * SIZE), (4 * SIZE, 2 * SIZE), (SIZE, SIZE)]:
        images = random_images(rng, 2, size)
        assert_trimmed(backend.infer(images), images)
        assert lane.context.shape == (2, *size, 3)
    assert lane.input_capacity == 2 * 4 * SIZE * 2 * SIZE * 3
    assert lane.graph is None  # the last shape ran once: eager, as the policy wants
    small = random_images(rng, 1, (3, SIZE))
    backend.infer(small)
    assert lane.context.shape == (1, SIZE, SIZE, 3)
    with pytest.raises(EngineIOError, match=rf'larger than the engine\'s profile allows.*--max-image {5 * SIZE}x{4 * SIZE}'):
        backend.infer(random_images(rng, 1, (5 * SIZE, SIZE)))
    backend.close()
    assert not sim.live


def test_streams_keep_order_and_chunk_large_batches(sim):
    rng = np.random.default_rng(5)
    backend = make_backend(sim, streams=3, max_batch=2)
    batches = [random_images(rng, b) for b in (2, 1, 2, 2, 1, 2, 2)]
    results = list(backend.infer_batches(batches))
    assert len(results) == len(batches)
    for raw, images in zip(results, batches):
        assert_trimmed(raw, images)
    assert all(len(engine_ctx.addresses) == 6 for engine_ctx in backend._engine.contexts)
    with pytest.raises(BackendError, match='at most 2 images per batch, got 3'):
        list(backend.infer_batches([batches[0], random_images(rng, 3)]))
    big = random_images(rng, 5)
    assert_trimmed(backend.infer(big), big)  # Backend.infer runs it as 2 + 2 + 1
    backend.close()
    assert not sim.live


def test_bad_input_and_broken_engine_output(sim):
    backend = make_backend(sim)
    with pytest.raises(ValueError, match=r'uint8 \[B, H, W, 3\]'):
        backend.infer(np.zeros((1, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match=r'uint8 \[B, H, W, 3\]'):
        backend.infer(np.zeros((1, 0, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match=r'uint8 \[B, H, W, 3\]'):
        next(backend.infer_batches([np.zeros((1, SIZE, SIZE), np.uint8)]))
    with pytest.raises(BackendError, match='empty batch'):
        backend.infer(np.zeros((0, SIZE, SIZE, 3), np.uint8))

    original = SimContext.execute_async_v3

    def broken(self, stream_ptr):
        original(self, stream_ptr)
        memory_at(self.addresses['num_dets'], 4)[:] = np.array([D + 5], np.int32).view(np.uint8)
        return True

    SimContext.execute_async_v3 = broken
    try:
        with pytest.raises(EngineIOError, match='num_dets=11.*make engine'):
            backend.infer(np.zeros((1, SIZE, SIZE, 3), np.uint8))
    finally:
        SimContext.execute_async_v3 = original
    backend.close()


def test_backend_module_uses_the_patched_device(sim):
    """Guard for the tests above: the backend reaches device memory only through runtime.cuda.memory."""
    assert trt_backend.cuda_mem.DeviceBuffer is cuda_mem.DeviceBuffer
    assert 'SimDeviceBuffer' in cuda_mem.DeviceBuffer.__name__
