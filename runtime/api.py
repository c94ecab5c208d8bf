"""The Python API (README "Python API"): `runtime.load(path, **options)` gives a Model; calling it
with images gives one runtime.detections.Detections per image, which carries the class names and
the image, so `names`, `plot()`, `save()` and `to_coco_json()` need nothing passed back in.

    import runtime
    with runtime.load('build/yolact_tiny_shapes.onnx') as model:
        for result in model(['a.jpg', 'b.jpg']):
            print(result.names, result.scores); result.save('annotated.jpg')

Built on the backends (runtime.backends.open_backend) and runtime.pipeline.predict, so every
backend (torch, onnxruntime, TensorRT) returns its results through the same code.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.detections import Detections
from runtime.errors import ToolkitError
from runtime.images import load_image
from runtime.metadata import ModelMetadata
from runtime.pipeline import batches, predict

# The original's display code shows detections from 0.15-0.3 up; below that a trained model's
# output is mostly duplicates and background. COCO evaluation wants every detection: use 0.
DEFAULT_SCORE_THRESHOLD = 0.3
# What load() takes as a served model's address rather than a file.
SERVED_SCHEMES = ('http://', 'https://', 'grpc://')

# One image: a file path, or a uint8 [H, W, 3] array (BGR, or RGB with rgb=True).
ImageInput = Union[str, os.PathLike, np.ndarray]


class InputError(ToolkitError, ValueError):
    """Images (or options) a Model cannot take; the message names the image and the fix."""


def load(path: str | os.PathLike, *, backend: str = 'auto', batch_size: int = 1, **options) -> 'Model':
    """Load a model: a .pth/.pt checkpoint (torch), an .onnx export (onnxruntime) or a TensorRT
    .engine; `backend` overrides the choice by suffix ('torch', 'ort', 'trt').

    batch_size: images per inference call when the model is called with many. options go to the
    backend (runtime.backends.open_backend): e.g. config=, cross_class= (all backends),
    providers=, num_threads= (ort), streams=, gpu_paste= (trt), device= (torch).
    A served model's URL (SERVED_SCHEMES: http://HOST:PORT/yolact, grpc://...) opens it (open_served).
    Raises a ToolkitError subclass naming the fix for a missing file, an unknown suffix or a
    model the backend cannot load.
    """
    if str(path).startswith(SERVED_SCHEMES):
        return open_served(str(path), **options)
    if batch_size < 1:
        raise InputError(f'batch_size must be at least 1, got {batch_size}')
    loaded = open_backend(path, backend, **options)
    for warning in loaded.warnings:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    return Model(loaded, batch_size=batch_size)


def open_served(url: str, **options) -> 'Model':
    """The model served at `url` (python -m runtime.serve; http://HOST:PORT/yolact or
    grpc://HOST:PORT/yolact) as a Model whose calls go to the server. The server was started with
    its options, so none are taken here."""
    if options:
        raise InputError(f'{url}: a served model takes no options ({", ".join(sorted(options))}); the server '
                         'was started with them (python -m runtime.serve --help)')
    from runtime.serve.client import ServedModel  # tritonclient, only for served models

    return Model(ServedModel(url))


class Model:
    """A loaded model, callable on images; usable for many calls, and as a context manager that
    frees the backend on exit (or call close()).

    backend: a loaded runtime.backends.Backend (load() makes one), or a served model
    (runtime.serve.client.ServedModel: open_served makes one); batch_size: images per call.
    """

    def __init__(self, backend: Backend, *, batch_size: int = 1):
        self.backend = backend
        self.batch_size = batch_size

    @property
    def metadata(self) -> ModelMetadata:
        """The model's ModelMetadata (config, class_names, input_size, thresholds, precision)."""
        return self.backend.metadata

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.backend.metadata.class_names

    @property
    def description(self) -> str:
        """What runs the model, in words (e.g. 'onnxruntime on CPUExecutionProvider')."""
        return self.backend.description

    def __call__(self, images: ImageInput | Sequence[ImageInput], *, rgb: bool = False,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[Detections]:
        """Detect and segment instances.

        images: one image or a list of them, each a file path (decoded as BGR) or a uint8 [H, W, 3]
        array, BGR (OpenCV's order) or RGB with rgb=True (PIL's, matplotlib's); a uint8 [B, H, W, 3]
        array is B images. Any size; each is resized to the model input and the results mapped back.
        score_threshold: keep detections with score >= it (0 keeps every detection, as COCO
        evaluation needs). Returns one Detections per image, in order: boxes float32 [N, 4] xyxy
        image pixels, scores, classes, masks bool [N, H, W], names, plot(), save(), to_coco_json().
        The results hold the BGR image (a reference to a BGR array passed in, not a copy).
        """
        if score_threshold < 0:
            raise InputError(f'score_threshold must be 0 or more, got {score_threshold}')
        loaded = [read_input(item, index, rgb=rgb) for index, item in enumerate(as_input_list(images))]
        meta = self.metadata
        results = []
        for group in batches(loaded, self.batch_size):
            images = [image for image, _ in group]
            detections = (predict(self.backend, images, score_threshold=score_threshold)
                          if isinstance(self.backend, Backend) else
                          self.backend.predict(images, score_threshold=score_threshold))  # a served model
            results += [dataclasses.replace(dets, class_names=meta.class_names, category_ids=meta.category_ids,
                                            image=image, file_name=file_name)
                        for (image, file_name), dets in zip(group, detections)]
        return results

    def close(self) -> None:
        """Free the backend (idempotent); the model cannot be called afterwards."""
        self.backend.close()

    def __enter__(self) -> 'Model':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        if not isinstance(self.backend, Backend):  # a served model
            return f'Model({self.backend.url!r}, {self.description})'
        state = self.description if self.backend.is_loaded else 'closed'
        return f'Model({str(self.backend.path)!r}, {state})'


def as_input_list(images) -> list:
    """One image or a list of them -> a list; a uint8 [B, H, W, 3] array -> its B images."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError('no images given: pass a path, an array or a non-empty list of them')
        return list(images)
    raise InputError(f'cannot read images from a {type(images).__name__}: pass a file path, a uint8 [H, W, 3] '
                     'array, or a list of them')


def read_input(item, index: int, *, rgb: bool) -> tuple[np.ndarray, str]:
    """(uint8 [H, W, 3] BGR image, file name or '') of input number `index`: a file is read
    (runtime.images.load_image; ImageLoadError names a missing or undecodable file), an array is
    checked and, with rgb=True, its channels reversed."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(item), str(item)
    if not isinstance(item, np.ndarray):
        raise InputError(f'image {index} is a {type(item).__name__}: pass a file path or a uint8 [H, W, 3] array')
    if item.dtype != np.uint8:
        hint = ' (0..1 floats: (image * 255).round().astype(np.uint8))' if item.dtype.kind == 'f' else ''
        raise InputError(f'image {index} has dtype {item.dtype}: pass uint8 pixels 0..255{hint}')
    if item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
        raise InputError(f'image {index} has shape {list(item.shape)}: pass [H, W, 3] (grayscale: '
                         'cv2.cvtColor(image, cv2.COLOR_GRAY2BGR); drop an alpha channel with image[..., :3])')
    return (np.ascontiguousarray(item[..., ::-1]) if rgb else item), ''
