"""The TensorRT backend's GPU mask pasting (TrtBackend.detect): on the simulated device of
test_trt_lanes.py, with the paste kernel run by Triton's interpreter over the simulated device
memory, it returns runtime.pipeline.to_detections' Detections exactly and downloads only the
kept detections' box pixels; it falls back to the host with one log line; the CLI turns it off.
The `gpu` tests run the compiled kernel through the driver API on a real device."""

from __future__ import annotations

import ctypes
import logging

import numpy as np
import pytest

import tests.runtime.tensorrt.test_lanes as lanes
from runtime.cuda import memory as cuda_mem
from runtime.infer import backend_options, build_parser
from runtime.paste import box_pixel_ranges, paste_masks
from runtime.pipeline import kept_detections, to_detections
from runtime.tensorrt import backend as trt_backend, gpu_paste
from runtime.tensorrt.backend import TrtBackend
from runtime.tensorrt.gpu_paste import ImagePaste, PasteKernelUnavailable, PasteWorkspace, paste_on_gpu
from tests.runtime.tensorrt.test_lanes import D, HP, IO, GARBAGE, make_backend, random_images, sim  # noqa: F401 (fixture)

SCORE_THRESHOLD = 0.3


def realistic_outputs(images):
    """A stand-in for test_trt_lanes.expected_outputs with boxes in and around the image and masks
    near the threshold, drawn from a seed in image i's first pixel (which also gives num_dets)."""
    b = len(images)
    out = {'num_dets': (images[:, 0, 0, 0].astype(np.int64) % (D + 1)).astype(np.int32),
           'boxes': np.zeros((b, D, 4), np.float32), 'scores': np.zeros((b, D), np.float32),
           'classes': np.zeros((b, D), np.int32), 'masks': np.zeros((b, D, HP, HP), np.float16)}
    for i, image in enumerate(images):
        rng = np.random.default_rng(int(image[0, 0, 1]) + 1000 * int(image[0, 0, 0]))
        out['boxes'][i] = rng.uniform(-0.2, 1.2, (D, 4))
        out['scores'][i] = np.sort(rng.uniform(0, 1, D))[::-1]
        out['classes'][i] = rng.integers(0, 3, D)
        out['masks'][i] = 0.5 + rng.normal(0, 0.1, (D, HP, HP))
    valid = np.arange(D)[None, :] < out['num_dets'][:, None]
    for name in ('boxes', 'scores', 'classes', 'masks'):
        out[name][~valid] = GARBAGE
    return out, valid


class InterpretedPasteKernel:
    """runtime.cuda.module.PtxKernel's launch() on the simulated device: the kernel under Triton's
    interpreter, each pointer argument wrapped as a tensor over the simulated allocation it is in."""

    DTYPES = {0: IO['masks'].dtype, 4: np.float32, 6: np.float32, 10: np.uint8}  # else int32

    def __init__(self, dev):
        from triton.runtime.interpreter import InterpretedFunction

        from runtime.tensorrt.paste_kernel import PasteKernelConfig, paste_masks_kernel
        config = PasteKernelConfig()
        self.dev, self.launches, self.block_hw = dev, 0, (config.block_y, config.block_x)
        self.kernel, self.constexprs = InterpretedFunction(paste_masks_kernel.fn), config.constexprs()

    def tensor_at(self, ptr, dtype):
        import torch
        buffer = next(b for b in self.dev.live if getattr(b, 'nbytes', None) is not None and b.ptr <= ptr < b.ptr + b.nbytes)
        nbytes = (buffer.ptr + buffer.nbytes - ptr) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize
        memory = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return torch.from_numpy(memory.view(dtype))

    def launch(self, stream_ptr, grid, args):
        self.launches += 1
        tensors = [self.tensor_at(a, self.DTYPES.get(i, np.int32)) if kind == 'ptr' else a
                   for i, (a, kind) in enumerate(zip(args, gpu_paste.PARAM_KINDS))]
        self.dev.streams[stream_ptr].run(lambda: self.kernel[grid](*tensors, **self.constexprs))


@pytest.fixture
def paste_backend(sim, monkeypatch):
    """(make, kernel): make(**make_backend options) gives a simulated TrtBackend with realistic
    outputs whose lanes paste with `kernel`; make(paste=False) one that pastes on the host."""
    pytest.importorskip('torch')
    pytest.importorskip('triton')
    monkeypatch.setattr(lanes, 'expected_outputs', realistic_outputs)
    kernel = InterpretedPasteKernel(sim)

    def make(paste: bool = True, **options):
        backend = make_backend(sim, graphs=False, **options)
        for lane in backend._lanes:
            lane.paste = PasteWorkspace(kernel, kernel.block_hw) if paste else None
        return backend
    return make, kernel


def assert_same_detections(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.image_size == e.image_size
        for field in ('boxes', 'scores', 'classes', 'masks'):
            value, reference = getattr(g, field), getattr(e, field)
            assert value.dtype == reference.dtype, field
            np.testing.assert_array_equal(value, reference, err_msg=field)


def test_detect_pastes_on_the_device_and_downloads_only_kept_box_pixels(paste_backend, sim):
    make, kernel = paste_backend
    backend = make()
    images = random_images(np.random.default_rng(11), 4)
    images[:, 0, 0, 0] = [D, 3, 0, D]
    # at least the prototype grid (HP x HP) -> device; smaller -> host
    sizes = [(HP, HP), (4, 6), (9, 11), (40, 23)]
    assert [paste_on_gpu(s, (HP, HP)) for s in sizes] == [True, False, True, True]
    raw = backend.infer(images)  # the host path's inputs, through the same simulated engine
    expected = to_detections(raw, sizes, score_threshold=SCORE_THRESHOLD, mask_threshold=0.5)
    assert sum(len(e) for e in expected) > 4 and any(e.masks.any() for e in expected)

    sim.downloaded = 0
    got = backend.detect(images, sizes, score_threshold=SCORE_THRESHOLD, mask_threshold=0.5)
    assert_same_detections(got, expected)
    assert kernel.launches >= 2
    # num_dets, the small outputs' real rows, the host image's masks rows, the device images'
    # kept box pixels: nothing else crosses the bus
    small_rows = sum(IO[n].row_nbytes for n in ('boxes', 'scores', 'classes'))
    box_pixels = sum(kept_box_pixels(raw, b, sizes[b]) for b in (0, 2, 3))
    assert sim.downloaded == 4 * 4 + int(raw['num_dets'].sum()) * small_rows + 3 * IO['masks'].row_nbytes + box_pixels
    backend.close()
    assert not sim.live, 'close() must free the paste buffers too'


def kept_box_pixels(raw, b, image_hw) -> int:
    """Pixels inside image b's kept boxes (runtime.paste's ranges): the bytes GPU pasting downloads."""
    keep = kept_detections(raw, b, SCORE_THRESHOLD)
    boxes = raw['boxes'][b, keep]
    x_first, x_stop = box_pixel_ranges(boxes[:, 0], boxes[:, 2], image_hw[1])
    y_first, y_stop = box_pixel_ranges(boxes[:, 1], boxes[:, 3], image_hw[0])
    return int(((x_stop - x_first).clip(0) * (y_stop - y_first).clip(0)).sum())


def test_detect_splits_batches_larger_than_max_batch(paste_backend):
    make, _ = paste_backend
    backend = make(max_batch=2)
    images = random_images(np.random.default_rng(12), 3)
    images[:, 0, 0, 0] = [D, D - 1, D]
    sizes = [(7, 6), (12, 5), (6, 9)]
    expected = to_detections(backend.infer(images), sizes, score_threshold=0, mask_threshold=0.5)
    assert_same_detections(backend.detect(images, sizes, score_threshold=0, mask_threshold=0.5), expected)
    with pytest.raises(ValueError, match='3 images but 2 image sizes'):
        backend.detect(images, sizes[:2], score_threshold=0, mask_threshold=0.5)
    backend.close()


def test_video_path_pastes_on_the_device_on_every_lane(paste_backend, sim):
    """runtime.pipeline.predict_batches (video) goes through detect_batches: 3 lanes, each with
    its own paste workspace, the Detections of predict on a host-pasting backend, in order."""
    from runtime.pipeline import predict
    from runtime.pipeline import predict_batches

    make, kernel = paste_backend
    rng = np.random.default_rng(14)
    frames = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(7)]
    for frame in frames:
        frame[:, :, :] = rng.integers(D - 1, D + 1)  # the resized first pixel gives D - 1 or D detections
    frame_batches = [frames[i:i + 2] for i in range(0, len(frames), 2)]
    on_host = make(paste=False)
    expected = [predict(on_host, batch, score_threshold=0.2) for batch in frame_batches]
    on_host.close()
    backend = make(streams=3, max_batch=2)
    results = list(predict_batches(backend, iter(frame_batches), score_threshold=0.2))
    assert kernel.launches == len(frames)  # one launch per frame (12 x 10 >= 5 x 5: all on the device)
    assert [images for images, _ in results] == frame_batches
    for (_, got), want in zip(results, expected):
        assert_same_detections(got, want)
    backend.close()
    assert not sim.live


@pytest.mark.parametrize('gpu_paste, level, message', [
    (True, logging.WARNING, 'masks are pasted on the CPU: triton is not installed'),
    (False, logging.INFO, 'masks are pasted on the CPU (GPU pasting is turned off)'),
], ids=['no-triton', 'turned-off'])
def test_host_pasting_fallback_says_so_once(gpu_paste, level, message, sim, monkeypatch, caplog):
    def unavailable(masks_dtype):
        raise PasteKernelUnavailable('triton is not installed (No module named triton)')

    monkeypatch.setattr(trt_backend, 'load_paste_kernel', unavailable)
    monkeypatch.setattr(lanes, 'expected_outputs', realistic_outputs)
    backend = make_backend(sim, streams=2, graphs=False)
    backend.gpu_paste = gpu_paste
    with caplog.at_level(logging.INFO, logger='runtime.tensorrt.backend'):
        backend._set_up_gpu_paste()
    assert [(r.levelno, message in r.getMessage()) for r in caplog.records] == [(level, True)]
    assert all(lane.paste is None for lane in backend._lanes)
    images = random_images(np.random.default_rng(13), 2)
    images[:, 0, 0, 0] = D
    sizes = [(30, 40), (9, 9)]
    expected = to_detections(backend.infer(images), sizes, score_threshold=0.1, mask_threshold=0.5)
    assert_same_detections(backend.detect(images, sizes, score_threshold=0.1, mask_threshold=0.5), expected)
    backend.close()


def test_gpu_paste_option_reaches_the_backend():
    assert TrtBackend('x.engine').gpu_paste and not TrtBackend('x.engine', gpu_paste=False).gpu_paste
    parser = build_parser()
    assert backend_options(parser.parse_args(['img.jpg', '--no-gpu-paste'])) == {'gpu_paste': False}
    assert 'gpu_paste' not in backend_options(parser.parse_args(['img.jpg']))  # other backends take no such option


# -- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu
def test_compiled_kernel_on_the_device_equals_paste_masks():
    """The paste kernel load_paste_kernel gives (the shipped PTX on sm_80 and later), launched through
    the driver API on device masks laid out as TensorRT writes them ([B, D, Hp, Wp], float32 and
    float16), against paste_masks."""
    pytest.importorskip('triton')
    rng = np.random.default_rng(21)
    batch, max_dets, proto_hw = 2, 7, (23, 17)
    stream = cuda_mem.Stream()
    for dtype in (np.float32, np.float16):
        kernel, block_hw = gpu_paste.load_paste_kernel(dtype)
        workspace = PasteWorkspace(kernel, block_hw, memory_budget=50_000)  # several rounds
        masks = (0.5 + rng.normal(0, 0.1, (batch, max_dets, *proto_hw))).astype(dtype)
        boxes = rng.uniform(-0.2, 1.2, (batch, max_dets, 4)).astype(np.float32)
        boxes[0, 0] = [0, 0, 1, 1]
        device = cuda_mem.DeviceBuffer(masks.nbytes)
        staging = cuda_mem.PinnedBuffer(masks.nbytes)
        try:
            np.copyto(staging.view(dtype, masks.shape), masks)
            stream.copy_to_device(device.ptr, staging.ptr, masks.nbytes)
            keeps = [np.array([0, 2, 3, 6]), np.array([1, 5])]
            sizes = [(480, 640), (301, 157)]
            got = workspace.paste(stream, device.ptr, proto_hw,
                                  [ImagePaste(sizes[b], b * max_dets + keeps[b], boxes[b, keeps[b]]) for b in range(2)],
                                  0.5)
            for b in range(2):
                np.testing.assert_array_equal(
                    got[b], paste_masks(masks[b, keeps[b]].astype(np.float32), boxes[b, keeps[b]], sizes[b], 0.5))
        finally:
            workspace.free()
            kernel.free()
            device.free()
            staging.free()
    stream.free()


@pytest.mark.gpu
def test_engine_detections_are_the_same_pasted_on_the_gpu_and_on_the_host():
    from tests.gpu.artifacts import engine_for, shapes_images

    pytest.importorskip('triton')
    engine = engine_for('fp32', False)
    with TrtBackend(engine) as on_gpu, TrtBackend(engine, gpu_paste=False) as on_host:
        assert on_gpu._lanes[0].paste is not None, 'the paste kernel did not load (see the log)'
        images = shapes_images(on_gpu.max_batch)
        sizes = [(480 + 16 * i, 640 - 8 * i) for i in range(len(images))]
        kwargs = dict(score_threshold=0.05, mask_threshold=on_gpu.metadata.mask_threshold)
        expected = on_host.detect(images, sizes, **kwargs)
        assert sum(len(e) for e in expected) > 0
        assert_same_detections(on_gpu.detect(images, sizes, **kwargs), expected)
