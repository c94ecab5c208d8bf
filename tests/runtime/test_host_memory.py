"""runtime.host_memory: what this machine can give, and refusals that say what would fit."""

import pytest

from runtime.host_memory import MemoryLimitError, available_memory, check_fits, largest_fitting


def test_available_memory_is_what_the_kernel_reports():
    with open('/proc/meminfo') as f:
        reported = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    assert abs(available_memory() - reported) < 0.05 * reported  # other processes allocate meanwhile


def test_a_need_beyond_what_is_available_is_refused_with_the_numbers():
    check_fits(10**9, '--x 1', 'pass less', available=2 * 10**9)
    with pytest.raises(MemoryLimitError, match=r'^--x 3 would need about 3.0 GB of memory and this machine has '
                                               r'2.0 GB available: pass --x 2$'):
        check_fits(3 * 10**9, '--x 3', 'pass --x 2', available=2 * 10**9)
    assert largest_fitting(fixed=100, per_unit=30, available=200) == 3
    assert largest_fitting(fixed=300, per_unit=30, available=200) == 0
