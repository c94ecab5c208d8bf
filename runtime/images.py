"""Reading image files, and writing annotated ones: the one loading the runtime, the calibration and
the evaluation share (numpy + cv2; no torch, so deployment hosts import it). Models resize images
inside their graph; the host only enlarges an image below a TensorRT engine's minimum size
(`enlarge_to`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import ToolkitError
from runtime.files import write_atomic

# File suffixes taken as images when a folder is scanned (files named explicitly are always tried).
IMAGE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.jpe', '.png', '.bmp', '.dib', '.tif', '.tiff', '.webp',
                            '.jp2', '.pbm', '.pgm', '.ppm', '.pnm', '.sr', '.ras'})


# The most pixels an image may have unless the caller raises it: 100 megapixels decode to 300 MB
# of BGR and about 1.5 GB of intermediate buffers; a 875 KB PNG can claim 100000 x 100000.
DEFAULT_MAX_PIXELS = 100_000_000
# No supported encoding stores more than 8 bytes a pixel (16-bit BGRA, uncompressed), plus headers
# and metadata: a larger file is not an image of the allowed size (e.g. a sparse 3 GB .jpg) and is
# refused without being read.
_MAX_BYTES_PER_PIXEL = 8
_MAX_METADATA_BYTES = 16 << 20
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8 and DAC CC): they carry the size.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageLoadError(ToolkitError, ValueError):
    """An image file that cannot be read; the message names the file and the reason."""


class ImageWriteError(ToolkitError, OSError):
    """An image that cannot be encoded for the file name it should be written to."""


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) a PNG or JPEG file's header claims, read without decoding (a few reads of
    its first segments); None for other formats or a header that cannot be parsed."""
    with open(path, 'rb') as f:
        head = f.read(24)
        if head.startswith(_PNG_SIGNATURE) and head[12:16] == b'IHDR':
            width, height = struct.unpack('>II', head[16:24])
            return height, width
        if not head.startswith(b'\xff\xd8'):
            return None
        f.seek(2)
        while True:  # JPEG segments: FF marker, big-endian length that counts itself
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            length = struct.unpack('>H', marker[2:])[0]
            if length < 2:  # a length that counts less than itself: corrupt, and seeking back would loop
                return None
            if marker[1] in _JPEG_SOF_MARKERS:
                frame = f.read(5)  # precision, height, width
                return (struct.unpack('>HH', frame[1:5])) if len(frame) == 5 else None
            f.seek(length - 2, os.SEEK_CUR)


def check_pixels(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageLoadError(f'{path}: {width} x {height} is {height * width / 1e6:.0f} megapixels, over the '
                             f'limit of {max_pixels / 1e6:g}: raise the limit (runtime.infer --max-pixels '
                             f'{height * width}) if it is meant')


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] BGR.

    Grayscale is expanded to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits (value / 257, rounded), EXIF orientation is applied. Raises ImageLoadError
    for a missing, unreadable, unsupported or corrupt file, and for one of more than max_pixels
    pixels: refused from the PNG/JPEG header or the file size before decoding, from the decoded
    size for other formats.
    """
    path = Path(path)
    try:
        claimed = header_size(path)
        if claimed is not None:
            check_pixels(path, *claimed, max_pixels)
        size = path.stat().st_size
        if size > max_pixels * _MAX_BYTES_PER_PIXEL + _MAX_METADATA_BYTES:
            raise ImageLoadError(f'{path}: {size / 1e6:.0f} MB is more than an image of at most {max_pixels / 1e6:g} '
                                 f'megapixels can take: raise the limit (runtime.infer --max-pixels) if it is meant')
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: that cannot report why it failed
    except OSError as e:
        raise ImageLoadError(f'{path}: cannot read ({e.strerror or e})') from None
    if data.size == 0:
        raise ImageLoadError(f'{path}: empty file')
    # IMREAD_COLOR converts grayscale and drops alpha; IMREAD_ANYDEPTH keeps 16 bits to scale here.
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:  # e.g. a header OpenCV's own size limit refuses, or a decoder failure
        reason = str(e).strip().splitlines()[-1]
        raise ImageLoadError(f'{path}: OpenCV cannot decode it ({reason})') from None
    if image is None:
        raise ImageLoadError(f'{path}: not an image OpenCV can decode (corrupt or unsupported format)')
    check_pixels(path, *image.shape[:2], max_pixels)
    if image.dtype == np.uint16:
        image = np.rint(image.astype(np.float32) / np.float32(257)).astype(np.uint8)  # 65535 -> 255
    elif image.dtype != np.uint8:
        raise ImageLoadError(f'{path}: {image.dtype} pixels are not supported: convert it to 8- or 16-bit')
    return image


def find_images(path: str | Path, problems: list[str] | None = None) -> list[Path]:
    """The image files under a folder (recursively, following links, by suffix, sorted), or [path]
    for a file.

    Raises ImageLoadError when the path does not exist. A sub-folder that cannot be listed is
    appended to `problems` as a message and skipped; without `problems` it raises ImageLoadError.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ImageLoadError(f'{path}: no such file or folder')

    def unreadable(error: OSError) -> None:
        message = f'{error.filename}: cannot list this folder ({error.strerror or error})'
        if problems is None:
            raise ImageLoadError(message)
        problems.append(message)

    # os.walk, not Path.rglob: rglob skips a folder it cannot list without a word.
    return sorted(Path(folder) / name for folder, _, names in os.walk(path, onerror=unreadable, followlinks=True)
                  for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)


def enlarge_to(image: np.ndarray, min_size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [max(H, h), max(W, w), 3] for min_size (h, w): bilinear (cv2.INTER_LINEAR),
    only the sides below the minimum stretched; `image` itself when it is already large enough.

    For a TensorRT engine whose optimisation profile starts above the image's size: the engine
    resizes everything else itself, so this runs only on images smaller than its minimum."""
    height, width = max(image.shape[0], min_size[0]), max(image.shape[1], min_size[1])
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode uint8 [H, W, 3] BGR by the file suffix (.jpg, .png, ...) and write it atomically.
    Raises ImageWriteError for a suffix OpenCV cannot encode (nothing is written)."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix, image)
    except cv2.error:  # OpenCV raises for a suffix it has no encoder for
        ok = False
    if not ok:
        raise ImageWriteError(f'{path}: OpenCV cannot encode {path.suffix or "a name without a suffix"} images: '
                              'name the file .jpg, .png, .bmp, .tif or .webp')
    write_atomic(path, encoded.tobytes())
