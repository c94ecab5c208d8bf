"""Whole-file writes that never leave a half-written file behind, and SHA-256 checksums. Standard
library only: every package writes its outputs (checkpoints, ONNX models, engines, videos, PTX)
through here, including the runtime on deployment hosts without torch."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK_BYTES = 1 << 20


@contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = '') -> Iterator[Path]:
    """A temporary name in `path`'s folder for a writer that needs a file name (torch.save,
    cv2.VideoWriter): `with atomic_output(path) as tmp: writer(tmp)`. On a clean exit the temporary
    file replaces `path` (os.replace), so a reader sees the old file or the new one, never a partial
    one; on an exception it is removed. Creates the folder.

    suffix: appended to the temporary name, for writers that pick the format by it (OpenCV's
    VideoWriter needs '.mp4' / '.avi')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A random part, not only the pid: two threads of one process may write the same target.
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through atomic_output; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (engines and ONNX files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()
