"""File helpers the builder and the sidecar share: whole-file writes that never leave a
half-written file behind, and SHA-256 checksums. Standard library only (the runtime imports this
through engines.sidecar on deployment hosts)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and os.replace, so a
    reader sees the old file or the new one, never a partial one. Creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (engines and ONNX files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()
