"""A PTX kernel loaded and launched through cuda-python's driver API (`cuda.bindings.driver`):
how the runtime runs a Triton kernel compiled ahead of time, without torch or Triton's launcher.

The module is loaded into the CUDA context current at construction (the primary context that
the runtime API, and so TensorRT, uses) and launched on runtime-API streams (runtime/cuda/memory.py),
which live in that same context. cuda-python is imported on first use.
"""

from __future__ import annotations

import ctypes

from runtime.cuda.memory import _Resource, bindings, check

# Kernel parameter kinds -> the ctypes type cuLaunchKernel copies each value as.
_PARAM_TYPES = {'ptr': ctypes.c_void_p, 'i32': ctypes.c_int32, 'f32': ctypes.c_float}


class PtxKernel(_Resource):
    """Kernel `name` of the PTX text `ptx`, JIT-compiled by the driver for the current device.

    param_kinds: the kernel's parameters in order, each 'ptr' (device address), 'i32' or 'f32';
    threads: threads per block; shared_bytes: dynamic shared memory per block (Triton's
    `metadata.shared`). CudaError when the driver refuses the PTX (e.g. a driver older than the
    PTX ISA version), with the driver's reason.
    """

    def __init__(self, ptx: str, name: str, param_kinds: tuple[str, ...], *, threads: int, shared_bytes: int):
        driver = bindings('driver')
        unknown = sorted(set(param_kinds) - set(_PARAM_TYPES))
        if unknown:
            raise ValueError(f'unknown kernel parameter kinds {unknown}; use {", ".join(_PARAM_TYPES)}')
        self.name, self.threads, self.shared_bytes = name, int(threads), int(shared_bytes)
        self._types = tuple(_PARAM_TYPES[kind] for kind in param_kinds)
        self._module = None
        self._context = check('cuCtxGetCurrent', driver.cuCtxGetCurrent())
        self._module = check('cuModuleLoadData', driver.cuModuleLoadData(ptx.encode() + b'\0'))
        self._function = check('cuModuleGetFunction', driver.cuModuleGetFunction(self._module, name.encode()))

    def launch(self, stream_ptr: int, grid: tuple[int, int, int], args: tuple) -> None:
        """Enqueue the kernel on the stream `stream_ptr` (runtime.cuda.memory.Stream.ptr) over `grid`
        blocks, with `args` in parameter order (ints for 'ptr'/'i32', floats for 'f32')."""
        if len(args) != len(self._types):
            raise ValueError(f'{self.name} takes {len(self._types)} arguments, got {len(args)}')
        driver = bindings('driver')
        # The caller's thread may have no current context (a thread other than the one that
        # loaded the module): make the module's context current, as the runtime API would.
        check('cuCtxSetCurrent', driver.cuCtxSetCurrent(self._context))
        check(f'cuLaunchKernel ({self.name})', driver.cuLaunchKernel(
            self._function, *(int(g) for g in grid), self.threads, 1, 1, self.shared_bytes,
            driver.CUstream(int(stream_ptr)), (tuple(args), self._types), 0))

    def free(self) -> None:
        if self._module is not None:
            module, self._module = self._module, None
            check('cuModuleUnload', bindings('driver').cuModuleUnload(module))
