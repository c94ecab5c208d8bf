"""Whole-file writes that never leave a half-written file behind, and SHA-256 checksums. Standard
library only: every package writes its outputs (checkpoints, ONNX models, engines, videos, PTX)
through here, including the runtime on deployment hosts without torch."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import ToolkitError

_CHUNK_BYTES = 1 << 20


class OutputError(ToolkitError, OSError):
    """An output file that cannot be written (a full disk, a read-only folder, a path that is a
    folder or lies under a file); the message names the path and what to do."""


def _write_failure(path: Path, error: OSError) -> OutputError:
    reason = error.strerror or type(error).__name__
    return OutputError(f'cannot write {path}: {reason}; free space there or choose another path')


def check_writable(path: str | os.PathLike, what: str = 'output') -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a
    file, or one in a folder this process may not write. Returns the path. (A full disk shows
    only when writing: atomic_output reports that.)

    what: how the message names the path (e.g. '--metrics')."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f'{what} {path} is a folder: give a file name')
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f'{what} {path} lies under {ancestor}, which is a file, not a folder: choose another path')
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f'{what} {path}: folder {ancestor} is not writable: choose another path')
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = '') -> Iterator[Path]:
    """A temporary name in `path`'s folder for a writer that needs a file name (torch.save,
    cv2.VideoWriter): `with atomic_output(path) as tmp: writer(tmp)`. On a clean exit the temporary
    file replaces `path` (os.replace), so a reader sees the old file or the new one, never a partial
    one; on an exception it is removed. Creates the folder.

    suffix: appended to the temporary name, for writers that pick the format by it (OpenCV's
    VideoWriter needs '.mp4' / '.avi').
    An OSError on the way (a full disk, a read-only folder, a path that is a folder or under a file)
    becomes an OutputError naming `path`."""
    path = Path(path)
    check_writable(path)
    # A random part, not only the pid: two threads of one process may write the same target.
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise _write_failure(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder under TMPDIR for intermediate files, removed on exit. An OSError inside
    (a full disk, an unwritable TMPDIR) becomes an OutputError that names the folder and the fix."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f'cannot write temporary files in {tempfile.gettempdir()}: {e.strerror or e}; free '
                          'space there or set TMPDIR to another folder') from None


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
