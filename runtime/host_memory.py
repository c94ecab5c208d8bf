"""How much memory this machine can still give, and the refusal of settings that cannot fit.

Standard library only (build tools and the runtime both ask). Settings that scale memory with a
user's number (export --max-dets, training --batch-size) are checked before the work: a process
that grows until the kernel kills it says nothing about why.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import ToolkitError

_MEMINFO = Path('/proc/meminfo')
GB = 1e9


class MemoryLimitError(ToolkitError, ValueError):
    """A setting whose memory cannot fit on this machine; the message says how much it needs and
    what to pass instead."""


def available_memory() -> int:
    """Bytes this machine can give a new allocation without swapping: Linux's MemAvailable, or the
    free physical pages where there is no /proc/meminfo."""
    if _MEMINFO.is_file():
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def largest_fitting(fixed: int, per_unit: int, available: int) -> int:
    """How many units of `per_unit` bytes fit in `available` beside `fixed` bytes (0 if none)."""
    return max((available - fixed) // per_unit, 0) if per_unit > 0 else 0


def check_fits(need: int, setting: str, advice: str, available: int | None = None) -> None:
    """MemoryLimitError unless `need` bytes fit in `available` (default: available_memory()).

    setting: what asked for the memory, e.g. '--batch-size 100000'; advice: what to pass instead."""
    available = available_memory() if available is None else available
    if need > available:
        raise MemoryLimitError(f'{setting} would need about {need / GB:.1f} GB of memory and this machine has '
                               f'{available / GB:.1f} GB available: {advice}')
