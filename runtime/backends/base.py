"""The interface every inference backend shares (the shape of Polygraphy's runners).

A backend owns one model: `load()` allocates what it needs (session, engine, device buffers),
`infer()` runs a batch of images through the model with its post-processing, `close()` frees
what `load()` allocated. Use it as a context manager. Subclasses implement the `_*_impl` hooks;
the public methods check state and inputs so every backend fails the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import ToolkitError
from runtime.metadata import ModelMetadata

if TYPE_CHECKING:
    from runtime.detections import Detections

# The model's outputs with post-processing, by their names in the ONNX contract
# (runtime.contract.POSTPROCESS_OUTPUTS): num_dets int32 [B]; boxes float32 [B, D, 4] xyxy relative;
# scores float32 [B, D]; classes int32 [B, D] 0-based; masks float32 [B, D, Hp, Wp]; for YOLACT++
# also box_scores float32 [B, D] (runtime.contract.BOX_SCORES). Rows past num_dets are padding.
RawDetections = dict[str, np.ndarray]


class BackendError(ToolkitError, ValueError):
    """A model a backend cannot load or inputs it cannot run; the message says what to do."""


class Backend(abc.ABC):
    """One loaded model. Attributes (valid after `load()`):

    metadata: ModelMetadata of the model (config, class names, input size, thresholds).
    max_batch: the largest batch `infer` accepts, or None for no limit.
    output_names: the RawDetections names `infer` returns, in the model's order: POSTPROCESS_OUTPUTS,
    and BOX_SCORES for a YOLACT++ model (what a served model declares, runtime.serve.repository).
    warnings: what the user should know about how the model runs (e.g. a GPU asked for and not
    granted), one line each, with the fix; the CLIs print them, runtime.load warns with them.
    """

    #: The name `open_backend(..., backend=NAME)` and the CLIs use.
    name: str = ''

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata: ModelMetadata | None = None
        self.max_batch: int | None = None
        self.output_names: tuple[str, ...] = ()
        self.warnings: list[str] = []
        self.is_loaded = False

    @property
    def description(self) -> str:
        """What runs the model, in words, for the CLIs to print once the model is loaded."""
        return f'{self.name} backend'

    # -- lifetime -------------------------------------------------------------------------------
    def load(self) -> 'Backend':
        """Load the model (idempotent); returns self."""
        if not self.is_loaded:
            self._load_impl()
            self.is_loaded = True
        return self

    def close(self) -> None:
        """Free what `load()` allocated (idempotent)."""
        if self.is_loaded:
            self._close_impl()
            self.is_loaded = False

    def __enter__(self) -> 'Backend':
        return self.load()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- inference ------------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> RawDetections:
        """Detect instances in a batch of images.

        images: uint8 [B, H, W, 3] BGR, any H, W >= 1 (the model resizes them to metadata.input_size).
        Returns RawDetections: the arrays named in runtime.contract.POSTPROCESS_OUTPUTS (and
        BOX_SCORES where the model has it), in the ONNX contract's shapes and dtypes, as numpy arrays
        the caller owns. Batches larger than max_batch run in chunks of max_batch.
        """
        images = self._checked_images(images)
        step = len(images) if self.max_batch is None else self.max_batch
        if len(images) <= step:
            return self._infer_impl(images)
        # Larger batches than the model takes run in chunks; the outputs are joined along B.
        chunks = [self._infer_impl(images[i:i + step]) for i in range(0, len(images), step)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def detect(self, images: np.ndarray, image_sizes: Sequence[tuple[int, int]], *, score_threshold: float,
               mask_threshold: float) -> list[Detections]:
        """Detections for a batch: images as `infer` takes them (uint8 [B, H, W, 3] BGR, one size),
        image_sizes the (H, W) of each original image. Keeps detections with
        score >= score_threshold, boxes in image pixels, masks pasted into the original images
        (value > mask_threshold, inside the box).

        Here: `infer`, then runtime.pipeline.to_detections (masks pasted on the host). A backend
        that pastes faster elsewhere (TensorRT, on the GPU) overrides it with the same result.
        """
        from runtime.pipeline import to_detections  # runtime.pipeline imports this module

        self._check_image_sizes(images, image_sizes)
        return to_detections(self.infer(images), image_sizes, score_threshold=score_threshold,
                             mask_threshold=mask_threshold)

    def _checked_images(self, images: np.ndarray) -> np.ndarray:
        """`images` contiguous, or BackendError when the backend is not loaded or they are not a
        non-empty uint8 [B, H, W, 3] batch with H, W >= 1."""
        if not self.is_loaded:
            raise BackendError(f'{type(self).__name__} for {self.path} is not loaded: call load() or use it '
                               'in a with-statement')
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[3] != 3 or 0 in images.shape[1:3]:
            got = f'{images.dtype} {images.shape}' if isinstance(images, np.ndarray) else type(images).__name__
            raise BackendError(f'images must be uint8 [B, H, W, 3] BGR, one size per batch (H, W >= 1); got {got}: '
                               'stack images of equal size, or use runtime.pipeline.predict, which groups them')
        if len(images) == 0:
            raise BackendError('infer got an empty batch: pass at least one image')
        return np.ascontiguousarray(images)

    @staticmethod
    def _check_image_sizes(images, image_sizes: Sequence[tuple[int, int]]) -> None:
        if len(image_sizes) != len(images):
            raise BackendError(f'detect got {len(images)} images but {len(image_sizes)} image sizes: pass the '
                               f'(H, W) of each original image')

    # -- hooks ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load_impl(self) -> None:
        """Allocate the model; set self.metadata, self.max_batch and self.output_names."""

    @abc.abstractmethod
    def _infer_impl(self, images: np.ndarray) -> RawDetections:
        """Run a checked, contiguous batch of at most max_batch images; return the RawDetections arrays."""

    @abc.abstractmethod
    def _close_impl(self) -> None:
        """Free what _load_impl allocated."""
