"""runtime.cuda.memory without a GPU: how cuda-python results are unpacked and errors reported, and
that no device call happens where there is no device."""

import pytest

from runtime.cuda import memory as cuda_mem
from runtime.cuda.device import device_count

cudart = pytest.importorskip('cuda.bindings.runtime')


def test_check_unpacks_values_and_names_errors():
    ok = cudart.cudaError_t.cudaSuccess
    assert cuda_mem.check('x', (ok,)) is None
    assert cuda_mem.check('x', (ok, 7)) == 7
    assert cuda_mem.check('x', (ok, 1, 2)) == (1, 2)
    with pytest.raises(cuda_mem.CudaError, match='cudaMalloc failed: cudaErrorMemoryAllocation'):
        cuda_mem.check('cudaMalloc', (cudart.cudaError_t.cudaErrorMemoryAllocation, None))


def test_allocation_without_a_driver_is_a_cuda_error():
    if device_count() > 0:
        pytest.skip('a CUDA device is present here')
    with pytest.raises(cuda_mem.CudaError, match='cudaMalloc failed'):
        cuda_mem.DeviceBuffer(1024)
