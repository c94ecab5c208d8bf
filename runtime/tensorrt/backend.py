"""`--backend trt`: run a TensorRT engine (.engine) built by `make engine`.

TensorRT 10/11 tensor-address API (`set_tensor_address`, `execute_async_v3`), device memory and
streams from cuda-python (runtime/cuda/memory.py), pinned host buffers, uint8 upload (the engine does
the normalisation), and a two-step download: `num_dets` first, then only the first num_dets rows of
boxes/scores/classes/masks (and box_scores in YOLACT++ engines) per image (the padding rows are never
copied).

Masks: `detect` (what runtime.pipeline.predict calls) pastes them into the original images on the
GPU before download when triton is installed (runtime/tensorrt/gpu_paste.py; off with gpu_paste=False), so
the float prototype-grid masks stay on the device and only the kept detections' box pixels come
back; `infer` returns the raw outputs as every backend does.

Throughput: `streams` lanes (execution context + stream + buffers each) run consecutive batches of
`infer_batches` in turn, so upload, inference and download of different batches overlap; each lane
captures a CUDA graph per batch size once that size has run (runtime/tensorrt/scheduling.py).

Before deserialising, the engine's JSON sidecar is checked (runtime/tensorrt/sidecar.py): another TensorRT
version, another GPU, a missing plugin or a corrupted file each give a message naming the fix.
tensorrt is imported on load(); importing this module needs neither TensorRT, CUDA nor torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from runtime.artifacts import engine_path
from runtime.backends.base import Backend, BackendError, RawDetections
from runtime.cuda import memory as cuda_mem
from runtime.cuda.device import cuda_device
from runtime.detections import Detections
from runtime.paste import paste_masks
from runtime.pipeline import kept_detections, make_detections
from runtime.tensorrt.engine_io import (INPUT_NAME, REBUILD_HINT, EngineIO, EngineIOError, TensorSpec, check_num_dets,
                                       download_segments, fit_to_profile, gather_detections, validate_engine_io)
from runtime.tensorrt.gpu_paste import ImagePaste, PasteKernelUnavailable, PasteWorkspace, load_paste_kernel, paste_on_gpu
from runtime.tensorrt.loader import TensorRTUnavailable, load_tensorrt, make_logger
from runtime.tensorrt.scheduling import CAPTURE, EAGER, REPLAY, GraphPolicy, pipelined
from runtime.tensorrt.sidecar import EngineSidecar, check_sidecar, plugin_key, read_sidecar

log = logging.getLogger(__name__)


class TensorRTUnavailableError(BackendError):
    """TensorRT or a CUDA GPU is missing on this host."""


def import_tensorrt(flavour: str = 'tensorrt'):
    """The TensorRT flavour an engine was built with ('tensorrt', or 'tensorrt_rtx' for engines
    built by TensorRT-RTX), as runtime.tensorrt.loader.TensorRT; TensorRTUnavailableError says what to install
    or use instead."""
    try:
        return load_tensorrt(flavour)
    except TensorRTUnavailable:
        other = 'tensorrt_rtx' if flavour == 'tensorrt' else 'tensorrt'
        present = ''
        if importlib.util.find_spec(other) is not None:
            present = f' ({other} is installed, but an engine runs only under the TensorRT it was built with)'
        raise TensorRTUnavailableError(
            f'the trt backend needs {flavour} and an NVIDIA GPU: pip install -e .[tensorrt] on a GPU host{present}; '
            f'elsewhere run the ONNX model with --backend ort') from None


def trt_unavailable_reason() -> str | None:
    """None when TensorRT imports and a CUDA device is visible, else why the trt backend cannot run."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as e:
        return str(e)
    if cuda_device() is None:
        return 'no CUDA device is visible (driver missing or too old, or CUDA_VISIBLE_DEVICES is empty)'
    return None


def prefer_engine(model: str | os.PathLike) -> Path:
    """What `--backend auto` runs for the default model: its engine (runtime.artifacts.engine_path) when that
    exists and TensorRT and a GPU are present, else `model` itself."""
    engine = engine_path(model)
    if engine.is_file() and trt_unavailable_reason() is None:
        return engine
    return Path(model)


def registered_plugin_keys(trt) -> frozenset[str]:
    """Plugin keys (runtime.tensorrt.sidecar.plugin_key form) of every creator in TensorRT's registry."""
    return frozenset(plugin_key(c.name, c.plugin_namespace, c.plugin_version)
                     for c in trt.module.get_plugin_registry().all_creators)


def register_plugins(trt) -> None:
    """Register our TensorRT plugins (Fast NMS, mask assembly) with this process's TensorRT
    (`trt`: runtime.tensorrt.loader.TensorRT). When they cannot be registered, the sidecar check names the
    engine's missing plugins; TensorRT-RTX has no Python plugins (its engines use the ONNX bodies)."""
    if trt.is_rtx:
        return
    try:
        from plugins import register_tensorrt_plugins
    except ImportError:
        return
    register_tensorrt_plugins()


def check_engine(path: str | os.PathLike, trt, gpu: tuple[str, str] | None,
                 registered_plugins: frozenset[str]) -> EngineSidecar:
    """Check the engine at `path` against this host before TensorRT deserialises it: the sidecar
    must exist and parse, and name this TensorRT (`trt`: runtime.tensorrt.loader.TensorRT), this GPU (`gpu`:
    (name, compute capability) or None), plugins that are registered, and the engine file's bytes.
    EngineMismatchError / SidecarError otherwise, each saying to rebuild with `make engine`."""
    return check_sidecar(path, tensorrt_flavour=trt.flavour, tensorrt_version=trt.version,
                         gpu_name=None if gpu is None else gpu[0],
                         compute_capability=None if gpu is None else gpu[1],
                         registered_plugins=registered_plugins)


def describe_engine(engine, trt) -> EngineIO:
    """The I/O tensors of a deserialised ICudaEngine and the batch and image ranges of profile 0."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        tensors.append(TensorSpec(
            name=name, dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))
    image_shape = next((t.shape for t in tensors if t.name == INPUT_NAME), (1, 1, 1, 3))
    if min(image_shape) >= 0:  # a static input: no profile to ask
        shapes = [image_shape] * 3
    else:
        shapes = [tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0)]
    return EngineIO(tuple(tensors), *(s[0] for s in shapes), *(tuple(s[1:3]) for s in shapes))


class _Lane:
    """One execution context with its own stream, device buffers, pinned host buffers and CUDA
    graph. Output buffers are sized for `capacity` images and the input buffer for
    `input_capacity` bytes (images come at their own size); both grow (never shrink) on demand."""

    def __init__(self, engine, io: EngineIO, use_graphs: bool):
        self.io = io
        self.context = engine.create_execution_context()
        if self.context is None:
            raise cuda_mem.CudaError('TensorRT could not create an execution context (out of device memory?)')
        self.stream = cuda_mem.Stream()
        self.policy = GraphPolicy(use_graphs)
        self.graph: cuda_mem.CudaGraph | None = None
        self.capacity = self.input_capacity = 0
        self.input_shape: tuple[int, ...] = ()  # of the batch submitted last
        self.device: dict[str, cuda_mem.DeviceBuffer] = {}
        self.host: dict[str, cuda_mem.PinnedBuffer] = {}
        self.paste: PasteWorkspace | None = None  # set when masks are pasted on the GPU

    def _ensure_capacity(self, batch: int, input_nbytes: int) -> None:
        if batch <= self.capacity and input_nbytes <= self.input_capacity:
            return
        capacity, input_capacity = max(batch, self.capacity), max(input_nbytes, self.input_capacity)
        self._free_buffers()
        for spec in self.io.tensors:
            nbytes = input_capacity if spec.name == INPUT_NAME else spec.nbytes_for(capacity)
            self.device[spec.name] = cuda_mem.DeviceBuffer(nbytes)
            self.host[spec.name] = cuda_mem.PinnedBuffer(nbytes)
            self.context.set_tensor_address(spec.name, self.device[spec.name].ptr)
        self.capacity, self.input_capacity = capacity, input_capacity
        self.policy.buffers_changed()

    def _host_view(self, name: str, batch: int) -> np.ndarray:
        spec = self.io[name]
        return self.host[name].view(spec.dtype, spec.shape_for(batch))

    def _enqueue(self, batch: int) -> None:
        """Upload, inference, num_dets download: the part of a batch that a CUDA graph replays."""
        input_nbytes = int(np.prod(self.input_shape, dtype=np.int64))  # uint8
        self.stream.copy_to_device(self.device[INPUT_NAME].ptr, self.host[INPUT_NAME].ptr, input_nbytes)
        if not self.context.execute_async_v3(self.stream.ptr):
            raise cuda_mem.CudaError('TensorRT execute_async_v3 failed (see the TensorRT log above)')
        self.stream.copy_to_host(self.host['num_dets'].ptr, self.device['num_dets'].ptr,
                                 self.io['num_dets'].nbytes_for(batch))

    def submit(self, images: np.ndarray) -> int:
        """Enqueue one batch (uint8 [B, H, W, 3], inside the profile) asynchronously; returns B for collect()."""
        batch = int(images.shape[0])
        self._ensure_capacity(batch, images.nbytes)
        self.input_shape = tuple(int(d) for d in images.shape)
        np.copyto(self.host[INPUT_NAME].view(np.uint8, self.input_shape), images)
        action, reshape = self.policy.next(self.input_shape)
        if reshape:
            self._free_graph()
            if not self.context.set_input_shape(INPUT_NAME, self.input_shape):
                raise EngineIOError(f'TensorRT refused input shape {self.input_shape}')
        if action == EAGER:
            self._enqueue(batch)
        elif action == REPLAY:
            self.graph.launch()
        elif action == CAPTURE:
            try:
                self.graph = cuda_mem.CudaGraph(self.stream, lambda: self._enqueue(batch))
            except cuda_mem.CudaError:
                # Some engines (plugins with host syncs, data-dependent shapes) cannot be captured.
                self.policy.captured(False)
                self._enqueue(batch)
            else:
                self.policy.captured(True)
                self.graph.launch()
        return batch

    def _download(self, names, counts: np.ndarray) -> None:
        """Copy the first counts[i] rows of image i of each named output to its pinned buffer and wait."""
        for name in names:
            host, device = self.host[name].ptr, self.device[name].ptr
            for offset, nbytes in download_segments(counts, self.io.max_dets, self.io[name].row_nbytes):
                self.stream.copy_to_host(host + offset, device + offset, nbytes)
        self.stream.synchronize()

    def collect(self, batch: int) -> dict[str, np.ndarray]:
        """Wait for a submitted batch and return its RawDetections (fresh arrays)."""
        self.stream.synchronize()
        counts = check_num_dets(self._host_view('num_dets', batch), self.io.max_dets)
        self._download(self.io.detection_outputs, counts)
        return gather_detections({name: self._host_view(name, batch) for name in self.io.detection_outputs}, counts)

    def collect_detections(self, batch: int, image_sizes, *, score_threshold: float,
                           mask_threshold: float) -> list[Detections]:
        """Wait for a submitted batch and return its Detections (runtime.pipeline.to_detections'
        result for image_sizes, the (H, W) of each original image). With a paste workspace
        (self.paste), every image runtime.tensorrt.gpu_paste.paste_on_gpu picks is pasted on the GPU: its
        float masks stay on the device and only its kept detections' box pixels come back. The
        other images' masks rows are downloaded and pasted on the host."""
        self.stream.synchronize()
        counts = check_num_dets(self._host_view('num_dets', batch), self.io.max_dets)
        # Every per-detection output but the masks (box_scores too, in a YOLACT++ engine).
        rows = tuple(name for name in self.io.detection_outputs if name != 'masks')
        self._download(rows, counts)
        # Pinned views: valid rows are read (copied) before this lane's next batch overwrites them.
        raw = {name: self._host_view(name, batch) for name in rows}
        raw['num_dets'] = counts
        keeps = [kept_detections(raw, b, score_threshold) for b in range(batch)]
        proto_hw = tuple(self.io['masks'].shape[2:])
        on_device = [self.paste is not None and paste_on_gpu(tuple(image_hw), proto_hw) for image_hw in image_sizes]
        self._download(('masks',), np.where(on_device, 0, counts))
        device_images = [b for b in range(batch) if on_device[b]]
        pasted = {}
        if device_images:
            pasted = dict(zip(device_images, self.paste.paste(
                self.stream, self.device['masks'].ptr, proto_hw,
                [ImagePaste(tuple(image_sizes[b]), b * self.io.max_dets + keeps[b], raw['boxes'][b, keeps[b]])
                 for b in device_images], mask_threshold)))
        masks_host = self._host_view('masks', batch)
        results = []
        for b, image_hw in enumerate(image_sizes):
            masks = pasted.get(b)
            if masks is None:
                masks = paste_masks(masks_host[b], raw['boxes'][b, keeps[b]], image_hw, mask_threshold,
                                    rows=keeps[b])
            results.append(make_detections(raw, b, keeps[b], image_hw, masks))
        return results

    def _free_graph(self) -> None:
        if self.graph is not None:
            self.graph.free()
            self.graph = None

    def _free_buffers(self) -> None:
        self._free_graph()
        for buffer in [*self.device.values(), *self.host.values()]:
            buffer.free()
        self.device, self.host, self.capacity, self.input_capacity = {}, {}, 0, 0

    def free(self) -> None:
        self._free_buffers()
        if self.paste is not None:
            self.paste.free()
            self.paste = None
        if self.stream is not None:
            self.stream.free()
            self.stream = None
        self.context = None  # TensorRT frees the context when the last reference goes


class TrtBackend(Backend):
    """A TensorRT engine behind the runtime's Backend interface.

    path: the .engine file (its sidecar `FILE.engine.json` beside it, see runtime/tensorrt/sidecar.py).
    streams: execution contexts (lanes) that `infer_batches` spreads batches over (1 = sequential).
    cuda_graphs: capture a CUDA graph per lane and batch size (replayed for repeated sizes).
    max_batch: cap on images per call (default: the engine profile's maximum).
    gpu_paste: paste masks on the GPU in `detect` (runtime/tensorrt/gpu_paste.py), for images at least the
    size of the prototype grid; needs triton at load (the kernel is compiled for this GPU then)
    and falls back to the host, with one log line, without it. False: always on the host.
    The engine runs on CUDA device 0 (choose the GPU with CUDA_VISIBLE_DEVICES).
    """

    name = 'trt'

    def __init__(self, path: str | os.PathLike, *, streams: int = 1, cuda_graphs: bool = True,
                 max_batch: int | None = None, gpu_paste: bool = True):
        super().__init__(path)
        if streams < 1:
            raise BackendError(f'streams must be >= 1, got {streams}')
        self.streams = int(streams)
        self.cuda_graphs = bool(cuda_graphs)
        self._requested_max_batch = max_batch
        self.io: EngineIO | None = None
        self._engine = self._runtime = self._logger = None
        self._lanes: list[_Lane] = []
        self.gpu_paste = bool(gpu_paste)
        self._paste_kernel = None

    def _load_impl(self) -> None:
        """Check the sidecar, deserialise the engine and set up `streams` lanes."""
        if not self.path.is_file():
            raise BackendError(f'{self.path}: no such engine file; build one with `make engine`')
        built_with = read_sidecar(self.path).engine.tensorrt_flavour
        trt = import_tensorrt(built_with)
        gpu = cuda_device()
        if gpu is None:
            raise TensorRTUnavailableError(f'{self.path}: the trt backend needs an NVIDIA GPU and none is visible; '
                                           f'run the ONNX model with --backend ort instead')
        register_plugins(trt)
        sidecar = check_engine(self.path, trt, gpu, registered_plugin_keys(trt))
        self.metadata = sidecar.metadata
        # Kept for the engine's lifetime: TensorRT logs through it while the engine lives.
        self._logger = make_logger(trt, verbose=logging.getLogger('engines.tensorrt').isEnabledFor(logging.DEBUG))
        self._runtime = trt.module.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineIOError(f'{self.path}: {trt.display_name} could not deserialise the engine (see the '
                                f'TensorRT log above); {REBUILD_HINT}')
        self.io = describe_engine(self._engine, trt.module)
        validate_engine_io(self.io, self.metadata, str(self.path))
        self.output_names = ('num_dets', *self.io.detection_outputs)
        cap = self._requested_max_batch
        if cap is not None and not 1 <= cap <= self.io.max_batch:
            raise EngineIOError(f'{self.path}: max_batch {cap} is outside the engine profile\'s '
                                f'1..{self.io.max_batch}; '
                                f'{REBUILD_HINT} with a larger --max-batch')
        self.max_batch = self.io.max_batch if cap is None else cap
        try:
            for _ in range(self.streams):
                self._lanes.append(_Lane(self._engine, self.io, self.cuda_graphs))
            self._set_up_gpu_paste()
        except BaseException:
            self._close_impl()
            raise

    def _set_up_gpu_paste(self) -> None:
        """Give every lane a paste workspace when masks are pasted on the GPU; else say once why not."""
        if not self.gpu_paste:
            log.info('%s: masks are pasted on the CPU (GPU pasting is turned off)', self.path)
            return
        try:
            self._paste_kernel, block_hw = load_paste_kernel(self.io['masks'].dtype)
        except PasteKernelUnavailable as e:
            log.warning('%s: masks are pasted on the CPU: %s', self.path, e)
            return
        for lane in self._lanes:
            lane.paste = PasteWorkspace(self._paste_kernel, block_hw)

    def _close_impl(self) -> None:
        for lane in self._lanes:
            lane.free()
        self._lanes = []
        if self._paste_kernel is not None:
            self._paste_kernel.free()
            self._paste_kernel = None
        self._engine = self._runtime = None

    def _infer_impl(self, images: np.ndarray) -> RawDetections:
        """images uint8 [B, H, W, 3] BGR inside the profile (see _checked_images), B <= max_batch -> RawDetections
        (num_dets int32 [B], boxes float32 [B, D, 4] xyxy relative, scores float32 [B, D], classes
        int32 [B, D], masks float32 [B, D, Hp, Wp]; rows past num_dets zero)."""
        self.io.check_batch(len(images))
        lane = self._lanes[0]
        return lane.collect(lane.submit(images))

    def detect(self, images: np.ndarray, image_sizes, *, score_threshold: float,
               mask_threshold: float) -> list[Detections]:
        """Backend.detect, with masks pasted on the GPU before download when a paste kernel is
        loaded (see gpu_paste); the same Detections as the host path, bit for bit."""
        images = self._checked_images(images)
        self._check_image_sizes(images, image_sizes)
        lane, results = self._lanes[0], []
        for first in range(0, len(images), self.max_batch):
            chunk = images[first:first + self.max_batch]
            self.io.check_batch(len(chunk))
            results += lane.collect_detections(lane.submit(chunk), image_sizes[first:first + len(chunk)],
                                               score_threshold=score_threshold, mask_threshold=mask_threshold)
        return results

    def infer_batches(self, batches: Iterable[np.ndarray]) -> Iterator[RawDetections]:
        """RawDetections for each batch (as `infer` takes it), in order, with up to `streams`
        batches in flight so uploads, inference and downloads overlap: the throughput path that
        the benchmark uses."""
        return pipelined(self._checked_batches(batches), self._lanes, _Lane.submit, _Lane.collect)

    def detect_batches(self, batches: Iterable[tuple[np.ndarray, Sequence[tuple[int, int]]]], *,
                       score_threshold: float, mask_threshold: float) -> Iterator[list[Detections]]:
        """`detect` for each (images, image_sizes) pair, in order, overlapped as in infer_batches:
        the throughput path video uses (runtime.pipeline.predict_batches)."""
        pending_sizes: deque = deque()

        def images_only():
            for images, image_sizes in batches:
                self._check_image_sizes(images, image_sizes)
                pending_sizes.append(image_sizes)
                yield images

        def collect(lane: _Lane, batch: int) -> list[Detections]:
            # pipelined collects in submission order, so the sizes come off in the same order
            return lane.collect_detections(batch, pending_sizes.popleft(), score_threshold=score_threshold,
                                           mask_threshold=mask_threshold)

        return pipelined(self._checked_batches(images_only()), self._lanes, _Lane.submit, collect)

    def _checked_images(self, images: np.ndarray) -> np.ndarray:
        """Backend's checks, then the engine profile's image range (runtime.tensorrt.engine_io.fit_to_profile:
        refused above it, enlarged on the host below it)."""
        return fit_to_profile(super()._checked_images(images), self.io, str(self.path))

    def _checked_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch contiguous, after Backend.infer's checks and the engine profile's batch range
        (the backend must be loaded now; the batches are checked as they are taken)."""
        if not self.is_loaded:
            raise BackendError(f'TrtBackend for {self.path} is not loaded: call load() or use it in a with-statement')

        def checked():
            for images in batches:
                images = self._checked_images(images)
                if len(images) > self.max_batch:
                    raise BackendError(f'infer_batches takes at most {self.max_batch} images per batch, got '
                                       f'{len(images)}: split the batch (infer() does it for you)')
                self.io.check_batch(len(images))
                yield images

        return checked()
