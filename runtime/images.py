"""Reading image files: the one loading the runtime, the calibration and the evaluation share (numpy +
cv2; no torch, so deployment hosts import it). Models resize images inside their graph; the host
only enlarges an image below a TensorRT engine's minimum size (`enlarge_to`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.errors import ToolkitError

# File suffixes taken as images when a folder is scanned (files named explicitly are always tried).
IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.jpe', '.png', '.bmp', '.dib', '.tif', '.tiff', '.webp',
                            '.jp2', '.pbm', '.pgm', '.ppm', '.pnm', '.sr', '.ras'})


class ImageLoadError(ToolkitError, ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] BGR.

    Grayscale is expanded to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits (value / 257, rounded), EXIF orientation is applied. Raises ImageLoadError
    for a missing, unreadable or unsupported file.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: that cannot report why it failed
    except OSError as e:
        raise ImageLoadError(f'{path}: cannot read ({e.strerror or e})') from None
    if data.size == 0:
        raise ImageLoadError(f'{path}: empty file')
    # IMREAD_COLOR converts grayscale and drops alpha; IMREAD_ANYDEPTH keeps 16 bits to scale here.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageLoadError(f'{path}: not an image OpenCV can decode (corrupt or unsupported format)')
    if image.dtype == np.uint16:
        image = np.rint(image.astype(np.float32) / np.float32(257)).astype(np.uint8)  # 65535 -> 255
    elif image.dtype != np.uint8:
        raise ImageLoadError(f'{path}: {image.dtype} pixels are not supported: convert it to 8- or 16-bit')
    return image


def find_images(path: str | Path) -> list[Path]:
    """The image files under a folder (recursively, by suffix, sorted), or [path] for a file.

    Raises ImageLoadError when the path does not exist.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageLoadError(f'{path}: no such file or folder')
    return sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def enlarge_to(image: np.ndarray, min_size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [max(H, h), max(W, w), 3] for min_size (h, w): bilinear (cv2.INTER_LINEAR),
    only the sides below the minimum stretched; `image` itself when it is already large enough.

    For a TensorRT engine whose optimisation profile starts above the image's size: the engine
    resizes everything else itself, so this runs only on images smaller than its minimum."""
    height, width = max(image.shape[0], min_size[0]), max(image.shape[1], min_size[1])
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
