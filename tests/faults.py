"""Faults the tests inject for real: a disk that fills up while a file is written."""

from __future__ import annotations

import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def disk_full_after(nbytes: int) -> Iterator[None]:
    """Inside the block, a write that would make any file longer than `nbytes` fails with an
    OSError (EFBIG, 'File too large'), as a write to a full disk fails with ENOSPC. Uses the
    process's file-size limit (SIGXFSZ ignored, so the write fails instead of killing the process)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
