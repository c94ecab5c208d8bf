"""The one home of the GPU queries: how many CUDA devices there are, and what device 0 is.

device_count asks the driver (libcuda) through ctypes, so it answers on a host with onnxruntime alone
and no cuda-python; device_info and cuda_device ask cuda-python's runtime API, which the TensorRT
backend and the engine builder use anyway, and answer None / raise CudaError where it is missing.
"""

from __future__ import annotations

import ctypes
import functools

from runtime.cuda.memory import CudaError, bindings, check

LIBCUDA = 'libcuda.so.1'


@functools.lru_cache(maxsize=None)
def device_count() -> int:
    """CUDA devices the driver reports (0 without a driver or device). Asked of libcuda directly: the
    onnxruntime-gpu wheel lists its CUDA provider as available even where no GPU exists, and a host
    that runs ONNX models alone has no cuda-python."""
    try:
        libcuda = ctypes.CDLL(LIBCUDA)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def device_info(device: int | None = None) -> dict:
    """The current (or given) device: {'name', 'compute_capability' 'X.Y', 'total_memory' bytes,
    'driver' 'major.minor', 'runtime' 'major.minor'}. CudaError without cuda-python or a device."""
    cudart = bindings('runtime')
    if device is None:
        device = check('cudaGetDevice', cudart.cudaGetDevice())
    props = check('cudaGetDeviceProperties', cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    driver = check('cudaDriverGetVersion', cudart.cudaDriverGetVersion())
    runtime = check('cudaRuntimeGetVersion', cudart.cudaRuntimeGetVersion())
    return {
        'name': name.rstrip('\x00'),
        'compute_capability': f'{props.major}.{props.minor}',
        'total_memory': int(props.totalGlobalMem),
        'driver': f'{driver // 1000}.{driver % 1000 // 10}',
        'runtime': f'{runtime // 1000}.{runtime % 1000 // 10}',
    }


def cuda_device() -> tuple[str, str] | None:
    """(name, compute capability 'major.minor') of CUDA device 0, or None when a driver, a device or
    cuda-python is missing. The driver is asked first (device_count), so a host without a GPU
    does not import cuda-python for nothing."""
    if device_count() == 0:
        return None
    try:
        info = device_info(0)
    except CudaError:
        return None
    return info['name'], info['compute_capability']
