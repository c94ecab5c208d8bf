"""Calibration images: chosen from a folder or a COCO JSON, pre-processed exactly as at inference.

Calibration ranges are only right for the pixels the deployed model will see, so the images go
through the runtime's own loading (runtime/images.py), not a second copy of it, and into the model
at their own size, as the runtime sends them: the graph resizes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calib.graph import CalibrationError
from yolact_torch.data.coco import CocoDataset, DatasetError
from runtime.images import IMAGE_SUFFIXES, find_images, load_image


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


class CalibrationImages(Sequence):
    """Calibration images, read from disk when used so that memory does not grow with their number:
    images[i] is uint8 [H, W, 3] BGR at the file's own size, as the runtime feeds it (the graph
    resizes); a slice gives a list of them. Each access reads the file again."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [load_image(path) for path in self.paths[index]]
        return load_image(self.paths[index])


def load_calibration_images(source: str | Path, count: int | None = None) -> CalibrationImages:
    """The calibration images of `source` (a folder of images or a COCO instances JSON), `count` of
    them spread over the set (default all), read when used (CalibrationImages)."""
    return CalibrationImages(select(image_paths(source), count))
