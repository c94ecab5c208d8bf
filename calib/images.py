"""Calibration images: chosen from a folder or a COCO JSON, pre-processed exactly as at inference.

Calibration ranges are only right for the pixels the deployed model will see, so the images go
through the runtime's own loading and resizing (runtime/pipeline.py), not a second copy of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calib.graph import CalibrationError
from model.data.coco import CocoDataset, DatasetError
from runtime.images import IMAGE_SUFFIXES, find_images, load_image, resize_to_input


def image_paths(source: str | Path) -> list[Path]:
    """The images of `source`: a COCO instances JSON (its images by id, file_name relative to the
    JSON's folder), or a folder (its image files, recursively, sorted by path)."""
    source = Path(source)
    if not source.exists():
        raise CalibrationError(f'calibration images {source} do not exist: give a folder of images or a COCO JSON')
    if source.is_file() and source.suffix.lower() == '.json':
        try:
            dataset = CocoDataset(source)
        except DatasetError as e:
            raise CalibrationError(str(e)) from None
        return [dataset.image_path(i) for i in dataset.image_ids]
    paths = find_images(source)
    if not paths:
        raise CalibrationError(
            f'no images in {source} (looked for {", ".join(sorted(IMAGE_SUFFIXES))}): give a folder that '
            'holds calibration images, or a COCO JSON')
    return paths


def select(paths: list[Path], count: int | None) -> list[Path]:
    """`count` of `paths` spread evenly over the list (all of them when count is None), so a
    folder sorted by scene or class still gives a mixed sample; the same every run."""
    if count is None:
        return paths
    if count < 1:
        raise CalibrationError(f'--count must be at least 1, got {count}')
    if count > len(paths):
        raise CalibrationError(
            f'asked for {count} calibration images but only {len(paths)} are available: '
            f'use --count {len(paths)} or fewer, or add images')
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, count).round()]


class CalibrationImages:
    """Calibration images, read from disk when used so that memory does not grow with their number.

    Stands for uint8 [N, H, W, 3] BGR at the model's input size (H, W) = input_size, pre-processed
    as at inference: len(), .shape and .dtype as an array's; a slice, images[a:b], loads those
    images as an array (the calibration reads a chunk at a time); np.asarray loads them all.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: list[Path], input_size: tuple[int, int]):
        self.paths = list(paths)
        self.input_size = tuple(input_size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.input_size, 3)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError(f'CalibrationImages takes a slice, not {type(index).__name__}')
        paths = self.paths[index]
        batch = np.empty((len(paths), *self.input_size, 3), np.uint8)
        for i, path in enumerate(paths):
            batch[i] = resize_to_input(load_image(path), self.input_size)
        return batch

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def load_calibration_images(source: str | Path, input_size: tuple[int, int],
                            count: int | None = None) -> CalibrationImages:
    """The calibration images of `source` (a folder of images or a COCO instances JSON), `count` of
    them spread over the set (default all), as the model's input (CalibrationImages: read when used)."""
    return CalibrationImages(select(image_paths(source), count), input_size)
