"""What a TensorRT engine's inputs and outputs look like, checked against the model contract, and
which bytes to copy back: the pure (device-free) half of the TensorRT backend.

Contract (README, "The model contract"): input `images` uint8 [B, H, W, 3] BGR at the image's own size (the engine
resizes; H and W within its optimisation profile, `fit_to_profile`); outputs `num_dets`
int32 [B], `boxes` float [B, D, 4] (xyxy, relative 0..1), `scores` float [B, D], `classes` int32
[B, D] (0-based), `masks` float [B, D, Hp, Wp] (prototype resolution), and in YOLACT++ engines
`box_scores` float [B, D] (the class scores before the mask re-scoring; bound and downloaded only
where the engine has it). Rows past num_dets are padding, so only the first num_dets rows of each
image are downloaded from the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS as OUTPUT_NAMES
from runtime.errors import ToolkitError
from runtime.images import enlarge_to
from runtime.metadata import ModelMetadata
from runtime.tensorrt.sidecar import rebuild_hint

# Outputs downloaded row by row, only up to num_dets per image (num_dets itself comes first); an
# engine's own list (EngineIO.detection_outputs) adds BOX_SCORES where it has that output.
DETECTION_OUTPUTS = tuple(name for name in OUTPUT_NAMES if name != 'num_dets')
_FLOAT_OUTPUTS = ('boxes', 'scores', 'masks', BOX_SCORES)
# Rank of each output: [B], [B, D, 4], [B, D], [B, D], [B, D, Hp, Wp], [B, D].
_RANKS = {'num_dets': 1, 'boxes': 3, 'scores': 2, 'classes': 2, 'masks': 4, BOX_SCORES: 2}
# Engines built from an FP16 graph may return half-precision floats; the host widens them.
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
REBUILD_HINT = rebuild_hint()

log = logging.getLogger(__name__)


class EngineIOError(ToolkitError, ValueError):
    """The engine's inputs/outputs do not match the model contract or its sidecar."""


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor. shape: as the engine reports it, -1 for a dynamic dimension (the batch;
    for `images` also its height and width, which `EngineIO` bounds)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    is_input: bool

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return (int(batch),) + tuple(self.shape[1:])

    def nbytes_for(self, batch: int) -> int:
        return int(np.prod(self.shape_for(batch), dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_nbytes(self) -> int:
        """Bytes of one detection row (one [d] slice of a [B, D, ...] output)."""
        return int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class EngineIO:
    """The engine's I/O tensors and the batch and image (H, W) ranges of its optimisation profile 0."""

    tensors: tuple[TensorSpec, ...]
    min_batch: int
    opt_batch: int
    max_batch: int
    min_image: tuple[int, int]
    opt_image: tuple[int, int]
    max_image: tuple[int, int]

    def __getitem__(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def max_dets(self) -> int:
        return int(self['scores'].shape[1])

    @property
    def detection_outputs(self) -> tuple[str, ...]:
        """The per-detection outputs to download: DETECTION_OUTPUTS, and BOX_SCORES where the engine
        has it (a YOLACT++ model)."""
        has_box_scores = any(s.name == BOX_SCORES and not s.is_input for s in self.tensors)
        return DETECTION_OUTPUTS + ((BOX_SCORES,) if has_box_scores else ())

    def check_batch(self, batch: int) -> None:
        if not self.min_batch <= batch <= self.max_batch:
            raise EngineIOError(f'batch {batch} is outside the engine profile\'s range '
                                f'{self.min_batch}..{self.max_batch}; pass at most {self.max_batch} '
                                f'images per call or {REBUILD_HINT} with a larger --max-batch')


def validate_engine_io(io: EngineIO, metadata: ModelMetadata, source: str) -> None:
    """Raise EngineIOError naming the first difference between the engine's I/O (`io`) and the
    contract for `metadata` (input size, max_dets); `source` names the engine file."""
    inputs = [s for s in io.tensors if s.is_input]
    if [s.name for s in inputs] != [INPUT_NAME]:
        raise EngineIOError(f'{source}: inputs are {[s.name for s in inputs]}, expected [{INPUT_NAME!r}]; '
                            f'export the model again and {REBUILD_HINT}')
    outputs = {s.name for s in io.tensors if not s.is_input}
    missing = sorted(set(OUTPUT_NAMES) - outputs)
    if missing:
        hint = (' (an engine built with --no-postprocess cannot be served: it has no Fast NMS)'
                if 'num_dets' in missing else '')
        raise EngineIOError(f'{source}: outputs {sorted(outputs)} lack {missing}{hint}; '
                            f'export with post-processing and {REBUILD_HINT}')
    unknown = sorted(outputs - set(OUTPUT_NAMES) - {BOX_SCORES})
    if unknown:
        raise EngineIOError(f'{source}: outputs {unknown} are not in the model contract ({", ".join(OUTPUT_NAMES)}, '
                            f'and {BOX_SCORES} for YOLACT++); export with python -m export and {REBUILD_HINT}')
    image = io[INPUT_NAME]
    if image.dtype != np.uint8 or len(image.shape) != 4 or image.shape[3] != 3:
        raise EngineIOError(f'{source}: input images is {image.dtype} {list(image.shape)}, the contract is '
                            f'uint8 [B, H, W, 3]; {REBUILD_HINT}')
    expected_dtypes = {'num_dets': (np.dtype(np.int32),), 'classes': (np.dtype(np.int32),)}
    for name in ('num_dets', *io.detection_outputs):
        spec = io[name]
        allowed = expected_dtypes.get(name, _FLOAT_DTYPES)
        if spec.dtype not in allowed or len(spec.shape) != _RANKS[name]:
            raise EngineIOError(f'{source}: output {name} is {spec.dtype} {list(spec.shape)}, expected '
                                f'{" or ".join(str(d) for d in allowed)} of rank {_RANKS[name]}; {REBUILD_HINT}')
        if name != 'num_dets' and spec.shape[1] != metadata.max_dets:
            raise EngineIOError(f'{source}: output {name} holds {spec.shape[1]} detections per image, '
                                f'the metadata says max_dets={metadata.max_dets}; {REBUILD_HINT}')
    if io['boxes'].shape[2] != 4:
        raise EngineIOError(f'{source}: boxes has {io["boxes"].shape[2]} coordinates, expected 4; {REBUILD_HINT}')
    if not 1 <= io.min_batch <= io.opt_batch <= io.max_batch:
        raise EngineIOError(f'{source}: profile batch range {io.min_batch}/{io.opt_batch}/{io.max_batch} '
                            f'(min/opt/max) is not valid; {REBUILD_HINT}')
    if not all(1 <= io.min_image[a] <= io.opt_image[a] <= io.max_image[a] for a in (0, 1)):
        raise EngineIOError(f'{source}: profile image range {io.min_image}/{io.opt_image}/{io.max_image} '
                            f'(min/opt/max) is not valid; {REBUILD_HINT}')


def fit_to_profile(images: np.ndarray, io: EngineIO, source: str) -> np.ndarray:
    """A batch (uint8 [B, H, W, 3], one size) the engine's profile takes: `images` itself when its
    size is in range; enlarged on the host (runtime.images.enlarge_to, one log line) when a side is
    below the profile's minimum. EngineIOError naming the rebuild flag when a side is above its maximum.
    """
    height, width = images.shape[1:3]
    max_h, max_w = io.max_image
    if height > max_h or width > max_w:
        needed = f'{max(height, max_h)}x{max(width, max_w)}'
        raise EngineIOError(f'{source}: the image is {height}x{width}, larger than the engine\'s profile allows '
                            f'({max_h}x{max_w}); rebuild the engine with --max-image {needed} '
                            f'(make engine MAX_IMAGE={needed})')
    min_h, min_w = io.min_image
    if height >= min_h and width >= min_w:
        return images
    enlarged = np.stack([enlarge_to(image, io.min_image) for image in images])
    log.info('%s: %d image(s) of %dx%d enlarged on the host to %dx%d, the engine\'s smallest', source, len(images),
             height, width, *enlarged.shape[1:3])
    return enlarged


def check_num_dets(num_dets: np.ndarray, max_dets: int) -> np.ndarray:
    """num_dets int32 [B] as returned by the engine -> int64 [B]; raises when a count is outside
    0..max_dets (a broken plugin or engine: the rows could not be trusted)."""
    counts = np.asarray(num_dets).astype(np.int64).reshape(-1)
    bad = np.flatnonzero((counts < 0) | (counts > max_dets))
    if bad.size:
        i = int(bad[0])
        raise EngineIOError(f'engine returned num_dets={int(counts[i])} for image {i}, outside 0..{max_dets}; '
                            f'the engine or its plugins are broken: {REBUILD_HINT}')
    return counts


def download_segments(num_dets: np.ndarray, max_dets: int, row_nbytes: int) -> list[tuple[int, int]]:
    """Byte ranges (offset, nbytes) of a contiguous [B, D, ...] output that hold real detections:
    image i's first num_dets[i] rows, at offset i * D * row_nbytes. Adjacent ranges are merged
    (an image with D detections runs straight into the next), empty ones dropped."""
    segments: list[tuple[int, int]] = []
    image_nbytes = max_dets * row_nbytes
    for i, count in enumerate(np.asarray(num_dets).reshape(-1).tolist()):
        if count <= 0:
            continue
        start, size = i * image_nbytes, int(count) * row_nbytes
        if segments and segments[-1][0] + segments[-1][1] == start:
            segments[-1] = (segments[-1][0], segments[-1][1] + size)
        else:
            segments.append((start, size))
    return segments


def gather_detections(host_outputs: dict[str, np.ndarray], num_dets: np.ndarray) -> dict[str, np.ndarray]:
    """RawDetections from host copies in which only each image's first num_dets rows are valid
    (the rest is stale memory). host_outputs: name -> [B, D, ...] arrays of an engine's
    detection_outputs (pinned views are fine: the result owns fresh memory). Returns the contract's
    dict: num_dets int32 [B], boxes float32 [B, D, 4], scores float32 [B, D], classes int32 [B, D],
    masks float32 [B, D, Hp, Wp], and box_scores float32 [B, D] where given, with rows past
    num_dets zero."""
    counts = np.asarray(num_dets).reshape(-1)
    result = {'num_dets': counts.astype(np.int32)}
    for name in host_outputs:
        source = host_outputs[name]
        dtype = np.float32 if name in _FLOAT_OUTPUTS else np.int32
        # np.zeros maps untouched zero pages, so padding rows cost no copying.
        out = np.zeros(source.shape, dtype)
        for i, count in enumerate(counts.tolist()):
            out[i, :count] = source[i, :count]
        result[name] = out
    return result
