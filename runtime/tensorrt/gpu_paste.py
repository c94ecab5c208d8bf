"""Mask pasting on the GPU for the TensorRT backend: the masks TensorRT wrote stay on the device,
runtime/tensorrt/paste_kernel.py pastes the kept detections into their boxes there, and only the packed
uint8 box regions come back (no torch, no Triton launcher: PTX through cuda-python's driver API).

- `build_paste_rounds` (numpy): the kernel's tables, from runtime.paste's own tap and box-range
  functions, grouped into rounds whose output fits a memory budget; `scatter_round` unpacks a
  round's output into bool [N, H, W] masks.
- `load_paste_kernel`: loads the kernel at backend load: the PTX shipped as package data
  (SHIPPED_PTX, compiled by `make ptx`), so no triton at run time; on a GPU older than the
  shipped PTX's architecture, compiled for it by Triton's AOT compiler when triton is installed
  (cached by Triton under TRITON_CACHE_DIR); or says why it cannot.
- `PasteWorkspace`: one lane's device and pinned buffers and the upload / launch / download.
- `paste_on_gpu`: the rule that picks device or host pasting per image.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from runtime.cuda import memory as cuda_mem
from runtime.cuda.device import device_info
from runtime.errors import ToolkitError
from runtime.paste import box_pixel_ranges, source_taps, zeroed_masks

if TYPE_CHECKING:
    from plugins.triton_compile import AotKernel


# Columns of the int32 regions table [N, 5]: x_first, x_stop, y_first, y_stop (image pixels,
# [first, stop)) and the byte offset of the detection's packed region in the round's output.
REGION_COLUMNS = 5
# Kernel parameters, in paste_kernel's order: 7 input pointers, threshold, Hp, Wp, output pointer.
PARAM_KINDS = ('ptr',) * 7 + ('f32', 'i32', 'i32', 'ptr')
_TRITON_FLOAT_TYPES = {np.dtype(np.float32): 'fp32', np.dtype(np.float16): 'fp16'}
# The paste kernel as PTX, compiled ahead of time by `make ptx` (python -m plugins.compile_ptx
# --kernel paste_masks), one <kernel>.sm_<arch>.<fp32|fp16>.ptx per masks dtype with its JSON
# descriptor (entry name, threads, shared memory, constexprs). PTX for sm_80 runs on every later GPU:
# the driver compiles it for the device at load.
SHIPPED_PTX = Path(__file__).resolve().parent / 'ptx'
# Bytes of packed output (device and pinned host buffers) per round: larger pastes take several
# rounds rather than growing the buffers (a 4K frame's 100 full-image boxes would need 0.8 GB).
DEFAULT_MEMORY_BUDGET = 64 * 1024 * 1024
# The packed output of one round is addressed with int32 offsets in the kernel.
_MAX_ROUND_BYTES = 2 ** 31 - 1

# Where pasting on the device is faster: not measured (this was written without a GPU), an
# estimate for a benchmark on a GPU host to confirm. Per detection the host path downloads the
# Hp x Wp float mask (76 KB at yolact_base's 138 x 138) and interpolates every box pixel with
# runtime.paste's compiled loop (~0.4 ns a pixel on one core: 0.7 ms for 100 boxes at 640x480);
# the device path downloads one byte per box pixel and costs one kernel launch and one small
# table upload per image (of the order of 10-50 us). It saves the host interpolation always and
# moves fewer bytes until a box exceeds 4 * Hp * Wp pixels, so only the fixed per-image cost can
# lose: images smaller than the prototype grid (each box at most Hp * Wp pixels, microseconds on
# the host) stay on the host, every larger image goes to the device.
GPU_PASTE_MIN_PIXELS_PER_PROTO_PIXEL = 1


def paste_on_gpu(image_hw: tuple[int, int], proto_hw: tuple[int, int]) -> bool:
    """True when an image of image_hw (H, W) pixels is pasted on the device (see the rule above)."""
    return image_hw[0] * image_hw[1] >= GPU_PASTE_MIN_PIXELS_PER_PROTO_PIXEL * proto_hw[0] * proto_hw[1]


class ImagePaste(NamedTuple):
    """One image's kept detections to paste: image_hw (H, W) pixels; rows int [n], each
    detection's row in the device masks buffer ([B * D, Hp, Wp], row b * D + d); boxes float32
    [n, 4] xyxy relative (as paste_masks takes them)."""

    image_hw: tuple[int, int]
    rows: np.ndarray
    boxes: np.ndarray


class PasteLaunch(NamedTuple):
    """One kernel launch: detections [first, stop) of image `image`. The *_at fields are 32-bit
    word offsets of its tables in the round's table words; grid is the launch grid (programs)."""

    image: int
    first: int
    stop: int
    rows_at: int
    regions_at: int
    x_taps_at: int
    x_weights_at: int
    y_taps_at: int
    y_weights_at: int
    regions: np.ndarray  # int64 [stop - first, REGION_COLUMNS], as in the table
    grid: tuple[int, int, int]


@dataclass
class PasteRound:
    """Launches whose packed outputs together fit the memory budget: `words` uint32 holds every
    launch's tables (one upload); the outputs take `out_nbytes` bytes (one download)."""

    words: np.ndarray
    launches: list[PasteLaunch]
    out_nbytes: int


def _taps_table(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """runtime.paste.source_taps as the kernel reads them: int32 [out_size, 2] (index0, index1)
    and float32 [out_size, 2] (weight0, weight1)."""
    index0, index1, weight0, weight1 = source_taps(out_size, in_size)
    return np.stack([index0, index1], 1).astype(np.int32), np.stack([weight0, weight1], 1)


def build_paste_rounds(images: Sequence[ImagePaste], proto_hw: tuple[int, int], *, block_hw: tuple[int, int],
                       memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[PasteRound]:
    """The kernel launches that paste `images`, grouped into rounds of at most `memory_budget`
    output bytes (a single detection larger than that gets a round of its own).

    proto_hw: (Hp, Wp) of the masks; block_hw: the kernel's (BLOCK_Y, BLOCK_X) tile, for the grid.
    Box regions and taps are runtime.paste's (box_pixel_ranges, source_taps), so a region is
    exactly the pixels paste_masks interpolates. Images without detections launch nothing.
    """
    budget = min(int(memory_budget), _MAX_ROUND_BYTES)
    rounds: list[PasteRound] = []
    words: list[np.ndarray] = []
    launches: list[PasteLaunch] = []
    used_words = out_nbytes = 0

    def close_round():
        nonlocal words, launches, used_words, out_nbytes
        if launches:
            rounds.append(PasteRound(np.concatenate(words), launches, out_nbytes))
        words, launches, used_words, out_nbytes = [], [], 0, 0

    for index, image in enumerate(images):
        height, width = int(image.image_hw[0]), int(image.image_hw[1])
        boxes = np.asarray(image.boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        x_first, x_stop = box_pixel_ranges(boxes[:, 0], boxes[:, 2], width)
        y_first, y_stop = box_pixel_ranges(boxes[:, 1], boxes[:, 3], height)
        region_h, region_w = np.maximum(y_stop - y_first, 0), np.maximum(x_stop - x_first, 0)
        areas = region_h * region_w
        if areas.max(initial=0) > _MAX_ROUND_BYTES:
            raise ValueError(f'a {height} x {width} image is too large to paste on the GPU '
                             f'(over {_MAX_ROUND_BYTES} pixels in one box); turn GPU pasting off')
        x_taps, x_weights = _taps_table(width, proto_hw[1])
        y_taps, y_weights = _taps_table(height, proto_hw[0])
        first = 0
        while first < len(boxes):
            # The longest run of detections that still fits the round (at least one, in a new round).
            totals = out_nbytes + np.cumsum(areas[first:])
            stop = first + int(np.searchsorted(totals, budget, side='right'))
            if stop == first:
                if launches:
                    close_round()
                    continue
                stop = first + 1
            chunk = slice(first, stop)
            grid = (stop - first, -(-int(region_h[chunk].max()) // block_hw[0]),
                    -(-int(region_w[chunk].max()) // block_hw[1]))
            if areas[chunk].max() > 0:  # empty boxes paste nothing (and CUDA refuses an empty grid)
                offsets = out_nbytes + np.concatenate([[0], np.cumsum(areas[chunk])[:-1]])
                regions = np.stack([x_first[chunk], x_stop[chunk], y_first[chunk], y_stop[chunk], offsets], 1)
                tables = [np.asarray(image.rows[chunk], np.int32), regions.astype(np.int32), x_taps, x_weights,
                          y_taps, y_weights]
                starts = [int(s) for s in np.cumsum([used_words] + [t.size for t in tables])]
                words.extend(t.reshape(-1).view(np.uint32) for t in tables)
                launches.append(PasteLaunch(index, first, stop, *starts[:6], regions, grid))
                used_words = starts[6]
                out_nbytes = int(totals[stop - first - 1])
            first = stop
    close_round()
    return rounds


def scatter_round(paste_round: PasteRound, packed: np.ndarray, masks: Sequence[np.ndarray]) -> None:
    """Copy a round's packed output (uint8 [out_nbytes], 0/1) into the images' masks (bool
    [n, H, W] each, indexed like `images` in build_paste_rounds, zero outside the boxes)."""
    for launch in paste_round.launches:
        out = masks[launch.image]
        for d, (x_first, x_stop, y_first, y_stop, offset) in enumerate(launch.regions.tolist(), launch.first):
            if x_stop > x_first and y_stop > y_first:
                area = (y_stop - y_first) * (x_stop - x_first)
                out[d, y_first:y_stop, x_first:x_stop] = packed[offset:offset + area].reshape(
                    y_stop - y_first, x_stop - x_first).view(bool)


class PasteKernelUnavailable(ToolkitError, RuntimeError):
    """The paste kernel cannot run on this host; the message says why (for the fallback log line)."""


def compile_paste_kernel(arch: int, masks_dtype) -> AotKernel:
    """The paste kernel as launchable PTX for CUDA compute capability `arch` (e.g. 80, 90) and
    masks of `masks_dtype` (float32 or float16). Needs triton (not a GPU, not torch)."""
    from plugins.triton_compile import compile_aot
    from runtime.tensorrt.paste_kernel import PasteKernelConfig, paste_masks_kernel, signature

    config = PasteKernelConfig()
    float_type = _TRITON_FLOAT_TYPES[np.dtype(masks_dtype)]
    return compile_aot(paste_masks_kernel, signature(float_type), config.constexprs(), arch=arch,
                       num_warps=config.num_warps)


def shipped_paste_ptx(compute_capability: int, masks_dtype) -> tuple[str, dict] | None:
    """(PTX text, its JSON descriptor) of the shipped paste kernel for masks of `masks_dtype`
    with the highest architecture the device runs (<= compute_capability, e.g. 90), or None."""
    float_type = _TRITON_FLOAT_TYPES[np.dtype(masks_dtype)]
    shipped = []
    for path in SHIPPED_PTX.glob(f'paste_masks.sm_*.{float_type}.ptx'):
        arch = int(re.fullmatch(r'paste_masks\.sm_(\d+)\..*', path.name).group(1))
        if arch <= compute_capability:
            shipped.append((arch, path))
    if not shipped:
        return None
    _, path = max(shipped)
    return path.read_text(), json.loads(path.with_suffix('.json').read_text())


def load_paste_kernel(masks_dtype):
    """Load the paste kernel for the current CUDA device: (PtxKernel, (BLOCK_Y, BLOCK_X)). The
    shipped PTX where the device runs it, else compiled here by triton. PasteKernelUnavailable says
    why not (masks of another dtype, an old GPU without triton, a failed compile or a driver that
    refuses the PTX, e.g. one older than its PTX ISA version)."""
    if np.dtype(masks_dtype) not in _TRITON_FLOAT_TYPES:
        raise PasteKernelUnavailable(f'the engine\'s masks are {np.dtype(masks_dtype)}, the kernel takes float32 '
                                     f'or float16')
    from runtime.cuda.module import PtxKernel

    major, minor = device_info()['compute_capability'].split('.')
    compute_capability = int(major) * 10 + int(minor)
    shipped = shipped_paste_ptx(compute_capability, masks_dtype)
    if shipped is not None:
        ptx, info = shipped
        name, threads, shared_bytes = info['name'], info['threads'], info['shared_bytes']
        block_hw = (info['constexprs']['BLOCK_Y'], info['constexprs']['BLOCK_X'])
    else:
        try:
            from plugins.triton_compile import KernelCompileError
            from runtime.tensorrt.paste_kernel import PasteKernelConfig
        except ImportError as e:
            raise PasteKernelUnavailable(f'no shipped PTX runs on sm_{compute_capability} and triton is not installed '
                                         f'({e}); pip install triton to paste on the GPU') from None
        try:
            compiled = compile_paste_kernel(compute_capability, masks_dtype)
        except KernelCompileError as e:
            raise PasteKernelUnavailable(str(e)) from None
        ptx, name, threads, shared_bytes = compiled.ptx, compiled.name, compiled.threads, compiled.shared_bytes
        config = PasteKernelConfig()
        block_hw = (config.block_y, config.block_x)
    try:
        kernel = PtxKernel(ptx, name, PARAM_KINDS, threads=threads, shared_bytes=shared_bytes)
    except cuda_mem.CudaError as e:
        raise PasteKernelUnavailable(f'the driver could not load the paste kernel: {e}') from None
    return kernel, block_hw


class PasteWorkspace:
    """One lane's paste buffers (device tables and output, pinned staging), grown on demand, and
    the pasting itself on that lane's stream. `kernel.launch(stream_ptr, grid, args)` runs
    paste_masks_kernel (a runtime.cuda.module.PtxKernel on a GPU)."""

    def __init__(self, kernel, block_hw: tuple[int, int], memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.kernel, self.block_hw, self.memory_budget = kernel, block_hw, memory_budget
        self._buffers: dict[str, cuda_mem.DeviceBuffer | cuda_mem.PinnedBuffer] = {}

    def _buffer(self, name: str, kind, nbytes: int):
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                buffer.free()
            buffer = self._buffers[name] = kind(nbytes)
        return buffer

    def paste(self, stream: cuda_mem.Stream, masks_ptr: int, proto_hw: tuple[int, int], images: Sequence[ImagePaste],
              threshold: float) -> list[np.ndarray]:
        """Paste on the device: masks_ptr is the engine's masks buffer (float [B, D, Hp, Wp] as
        the kernel was compiled for), images as ImagePaste. Returns bool [n, H, W] per image,
        equal to runtime.paste.paste_masks(masks rows, boxes, (H, W), threshold)."""
        masks = [zeroed_masks(len(image.boxes), *image.image_hw) for image in images]
        for paste_round in build_paste_rounds(images, proto_hw, block_hw=self.block_hw,
                                              memory_budget=self.memory_budget):
            table_nbytes = paste_round.words.nbytes
            staging = self._buffer('tables_host', cuda_mem.PinnedBuffer, table_nbytes)
            tables = self._buffer('tables', cuda_mem.DeviceBuffer, table_nbytes)
            out = self._buffer('out', cuda_mem.DeviceBuffer, paste_round.out_nbytes)
            packed = self._buffer('out_host', cuda_mem.PinnedBuffer, paste_round.out_nbytes)
            # The previous round's upload has completed: its download was waited for below.
            np.copyto(staging.view(np.uint32, paste_round.words.shape), paste_round.words)
            stream.copy_to_device(tables.ptr, staging.ptr, table_nbytes)
            for launch in paste_round.launches:
                tables_at = (launch.rows_at, launch.regions_at, launch.x_taps_at, launch.x_weights_at,
                             launch.y_taps_at, launch.y_weights_at)
                args = (masks_ptr, *(tables.ptr + 4 * at for at in tables_at), float(np.float32(threshold)),
                        int(proto_hw[0]), int(proto_hw[1]), out.ptr)
                self.kernel.launch(stream.ptr, launch.grid, args)
            stream.copy_to_host(packed.ptr, out.ptr, paste_round.out_nbytes)
            stream.synchronize()
            scatter_round(paste_round, packed.view(np.uint8, (paste_round.out_nbytes,)), masks)
        return masks

    def free(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers = {}
