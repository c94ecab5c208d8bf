"""Whole-file writes that never leave a half-written file behind, and SHA-256 checksums. Standard
library only: every package writes its outputs (checkpoints, ONNX models, engines, videos, PTX)
through here, including the runtime on deployment hosts without torch."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import ToolkitError

_CHUNK_BYTES = 1 << 20
# A temporary left by a writer on another host (whose PID means nothing here) is taken as stale
# after this long: longer than any single write of the toolkit (engine builds take minutes).
_STALE_TEMPORARY_SECONDS = 24 * 3600


class OutputError(ToolkitError):
    """An output path that cannot be written; the message names the path, the reason and the fix."""


def temporary_name(path: Path, suffix: str = '') -> Path:
    """The one naming rule of atomic_output's temporaries: `.NAME.PID.RANDOM.tmpSUFFIX` beside `path`
    (RANDOM: 8 hex digits), so stale ones of a killed run are recognisable (remove_stale_temporaries)."""
    # A random part, not only the pid: two threads of one process may write the same target.
    return path.with_name(f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}')


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


_TEMPORARY_NAME = re.compile(r'\..+\.(\d+)\.[0-9a-f]{8}\.tmp.*')
# Folders this process has swept: temporaries of killed runs predate it, so once a folder is enough
# (a sweep lists the folder: once per write would cost a listing per image of a large run).
_swept_folders: set[Path] = set()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries in `folder` (temporary_name) whose writer is dead or that are older
    than a day; returns the removed paths. Other files and live writers' temporaries stay."""
    removed = []
    try:
        candidates = list(folder.iterdir())
    except OSError:  # a folder we cannot list: nothing to clean, and the write reports the folder
        return removed
    for candidate in candidates:
        match = _TEMPORARY_NAME.fullmatch(candidate.name)
        if match is None:
            continue
        try:
            age = time.time() - candidate.stat().st_mtime
            if not _process_alive(int(match.group(1))) or age > _STALE_TEMPORARY_SECONDS:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def check_writable(path: str | os.PathLike, what: str = 'output', *, folder: bool = False) -> Path:
    """Raise OutputError unless a file (folder=True: files inside a folder) can be created at `path`,
    whose folders may not exist yet: a file not a folder, a folder not a file, not under a file, in
    a writable folder. Checked before the work, so a long run is not thrown away at its last step;
    a full disk still shows only when writing. what: how the user named it ('--json', '--out')."""
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(f'{what} {path} is a folder: name a file')
    existing = path if folder else path.parent
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail
            raise OutputError(f'{what} {path}: {existing} is a broken link: choose another path')
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise OutputError(f'{what} {path} is a file, not a folder: choose another path')
        raise OutputError(f'{what} {path} lies under {existing}, which is a file, not a folder: choose another path')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f'{what} {path}: the folder {existing} is not writable: choose another path')
    return path


def describe_os_error(error: OSError) -> str:
    """One line for an OSError of a write, with the fix where the space ran out."""
    if error.errno == errno.ENOSPC:
        return 'no space left on the device: free some space or choose another path'
    reason = error.strerror or str(error)
    if error.errno in (errno.EFBIG, errno.EDQUOT):  # a file-size limit or a quota: space, in effect
        return f'{reason}; free space there or choose another path'
    return reason


def _write_failure(path: Path, error: OSError) -> OutputError:
    return OutputError(f'cannot write {path}: {describe_os_error(error)}')


@contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = '') -> Iterator[Path]:
    """A temporary name in `path`'s folder for a writer that needs a file name (torch.save,
    cv2.VideoWriter): `with atomic_output(path) as tmp: writer(tmp)`. On a clean exit the temporary
    file replaces `path` (os.replace), so a reader sees the old file or the new one, never a partial
    one; on an exception it is removed. Creates the folder; the first time this process writes
    there, removes the temporaries killed runs left in it (remove_stale_temporaries).

    suffix: appended to the temporary name, for writers that pick the format by it (OpenCV's
    VideoWriter needs '.mp4' / '.avi').
    An OSError on the way (a full disk, a read-only folder, a path that is a folder or under a file)
    becomes an OutputError naming `path`."""
    path = Path(path)
    check_writable(path, 'output')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_failure(path, e) from None
    folder = path.parent.resolve()
    if folder not in _swept_folders:
        _swept_folders.add(folder)
        remove_stale_temporaries(folder)
    tmp = temporary_name(path, suffix)
    try:
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
