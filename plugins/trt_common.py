"""What the TensorRT plugin definitions share: reading constant dimensions, the float type of a
tensor, the GPU the kernels are compiled for, and a compiled kernel's launch parameters. Imported only by plugins/*/trt_plugin.py, which
need TensorRT >= 10.8 (`tensorrt.plugin`)."""

from __future__ import annotations

from runtime.errors import ToolkitError


class PluginBuildError(ToolkitError, ValueError):
    """A plugin cannot be built for the network it is in (the message says what to change)."""


def constant_dim(desc, axis: int, what: str) -> int:
    """The build-time value of dimension `axis` of a tensorrt.plugin.TensorDesc."""
    dim = desc.shape_expr[axis]
    if not dim.is_constant:
        raise PluginBuildError(f'{what} (dimension {axis}) must be fixed when the engine is built; '
                               f'only the batch dimension may be dynamic: re-export with static shapes')
    return int(dim.constant_value())


def float_type(desc) -> str:
    """'fp32' or 'fp16': the Triton pointer type for a float TensorDesc."""
    import tensorrt as trt

    if desc.dtype == trt.float32:
        return 'fp32'
    if desc.dtype == trt.float16:
        return 'fp16'
    raise PluginBuildError(f'the yolact plugins take float32 or float16 tensors, not {desc.dtype}')


def build_arch() -> int:
    """Compute capability of the current CUDA device as an int (80 for 8.0): the PTX target."""
    import triton

    return int(triton.runtime.driver.active.get_current_target().arch)


def launch_params(kernel, grid_x, grid_y=1, grid_z=1):
    """tensorrt.plugin.KernelLaunchParams for `kernel` (a plugins.triton_compile.AotKernel) over the
    grid (each an int or a symbolic expression): its thread count and shared memory."""
    import tensorrt.plugin as trtp

    launch = trtp.KernelLaunchParams()
    launch.grid_x, launch.grid_y, launch.grid_z = grid_x, grid_y, grid_z
    launch.block_x = kernel.threads
    launch.shared_mem = kernel.shared_bytes
    return launch
