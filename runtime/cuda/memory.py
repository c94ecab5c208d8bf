"""Device memory, pinned host memory, streams, events and CUDA graphs through cuda-python
(`cuda.bindings.runtime`), for the TensorRT backend; `check` unpacks runtime- and driver-API results.
The device queries live in runtime/cuda/device.py.

Every object frees what it allocated (`free()`, idempotent, also called by `__del__` as a last
resort), so a backend that is closed leaves nothing behind on the device. cuda-python is imported
on first use: importing this module costs nothing on a host without CUDA.
"""

from __future__ import annotations

import ctypes
import functools
import importlib

import numpy as np

from runtime.errors import ToolkitError


class CudaError(ToolkitError, RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


class CudaUnavailableError(CudaError):
    """cuda-python or a usable CUDA device is missing."""


@functools.lru_cache(maxsize=None)
def bindings(api: str):
    """cuda-python's `cuda.bindings.<api>` module, 'runtime' or 'driver', imported on first use."""
    try:
        return importlib.import_module(f'cuda.bindings.{api}')
    except ImportError:
        raise CudaUnavailableError(
            'cuda-python is not installed; on a GPU host run: pip install -e .[tensorrt]') from None


def _cudart():
    return bindings('runtime')


def check(call_name: str, result):
    """Unpack a cuda-python result tuple `(err, *values)` of the runtime API (cudaError_t) or the
    driver API (CUresult): raise CudaError unless err is success (0 in both), else return None,
    the single value, or the tuple of values."""
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        driver = bindings('driver')
        _, text = (driver.cuGetErrorString(err) if isinstance(err, driver.CUresult)
                   else _cudart().cudaGetErrorString(err))
        name = getattr(err, 'name', str(err))
        raise CudaError(f'{call_name} failed: {name} ({text.decode() if isinstance(text, bytes) else text})')
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def memory_in_use() -> int:
    """Bytes of device memory in use on the current device (all processes), from cudaMemGetInfo."""
    free, total = check('cudaMemGetInfo', _cudart().cudaMemGetInfo())
    return int(total) - int(free)


class _Resource:
    """Something allocated through CUDA: `free()` releases it (idempotent); dropping the last
    reference frees it as a last resort."""

    def free(self) -> None:
        raise NotImplementedError

    def __del__(self):
        try:
            self.free()
        except Exception:  # at interpreter shutdown the driver may be gone; it frees everything then
            pass


class DeviceBuffer(_Resource):
    """`nbytes` of device memory; `.ptr` is the device address as int."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # cudaMalloc(0) returns a null pointer; TensorRT wants a valid address for every tensor.
        self.ptr = int(check('cudaMalloc', _cudart().cudaMalloc(max(self.nbytes, 1))))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check('cudaFree', _cudart().cudaFree(ptr))


class PinnedBuffer(_Resource):
    """`nbytes` of page-locked host memory (fast, asynchronous copies). `.ptr` is its address;
    `view(dtype, shape)` is a numpy array over its first bytes (valid until `free()`)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(check('cudaMallocHost', _cudart().cudaMallocHost(max(self.nbytes, 1))))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr))

    def view(self, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f'a {dtype} array of shape {tuple(shape)} does not fit in {self.nbytes} pinned bytes')
        return self._bytes[:count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._bytes = None
            check('cudaFreeHost', _cudart().cudaFreeHost(ptr))


class Stream(_Resource):
    """A non-blocking CUDA stream (does not serialise with the legacy default stream)."""

    def __init__(self):
        cudart = _cudart()
        self.handle = check('cudaStreamCreateWithFlags', cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))

    @property
    def ptr(self) -> int:
        """The stream as an integer, the form TensorRT's execute_async_v3 takes."""
        return int(self.handle)

    def copy_to_device(self, device_ptr: int, host_ptr: int, nbytes: int) -> None:
        cudart = _cudart()
        check('cudaMemcpyAsync (host to device)', cudart.cudaMemcpyAsync(
            device_ptr, host_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle))

    def copy_to_host(self, host_ptr: int, device_ptr: int, nbytes: int) -> None:
        cudart = _cudart()
        check('cudaMemcpyAsync (device to host)', cudart.cudaMemcpyAsync(
            host_ptr, device_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle))

    def synchronize(self) -> None:
        check('cudaStreamSynchronize', _cudart().cudaStreamSynchronize(self.handle))

    def free(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check('cudaStreamDestroy', _cudart().cudaStreamDestroy(handle))


class CudaGraph(_Resource):
    """Work enqueued on `stream` by `record()` captured once and replayed by `launch()`.

    Capture is thread-local so other threads' streams are not disturbed. A failed capture (an
    operation that cannot be captured) raises CudaError and leaves the stream usable.
    """

    def __init__(self, stream: Stream, record):
        cudart = _cudart()
        self.stream = stream
        self._graph = self._exec = None
        check('cudaStreamBeginCapture', cudart.cudaStreamBeginCapture(
            stream.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            record()
        except BaseException:
            # End the capture whatever happened, or the stream stays in capture mode and every
            # later call on it fails.
            err, graph = cudart.cudaStreamEndCapture(stream.handle)
            if err == cudart.cudaError_t.cudaSuccess and graph is not None:
                cudart.cudaGraphDestroy(graph)
            raise
        graph = check('cudaStreamEndCapture', cudart.cudaStreamEndCapture(stream.handle))
        self._graph = graph
        self._exec = check('cudaGraphInstantiate', cudart.cudaGraphInstantiate(graph, 0))

    def launch(self) -> None:
        check('cudaGraphLaunch', _cudart().cudaGraphLaunch(self._exec, self.stream.handle))

    def free(self) -> None:
        cudart = _cudart()
        if self._exec is not None:
            handle, self._exec = self._exec, None
            check('cudaGraphExecDestroy', cudart.cudaGraphExecDestroy(handle))
        if self._graph is not None:
            handle, self._graph = self._graph, None
            check('cudaGraphDestroy', cudart.cudaGraphDestroy(handle))
