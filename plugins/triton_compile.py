"""Compiling the plugins' Triton kernels ahead of time, for a GPU that need not be present.

TensorRT's AOT plugins embed the PTX this returns. Every kernel is compiled without FMA
contraction (`enable_fp_fusion=False`), so `a * b - c` rounds after the product as in the numpy
references: the crop bounds and IoUs then agree to the bit.
"""

from __future__ import annotations

import os

# The architectures the tests compile for: Ampere (A100, RTX 30xx) and Hopper (H100).
TEST_ARCHS = (80, 90)


class KernelCompileError(RuntimeError):
    """A kernel could not be compiled for the requested GPU."""


def compile_kernel(fn, signature: dict, constexprs: dict, *, arch: int, num_warps: int):
    """Compile the @triton.jit kernel `fn` for CUDA compute capability `arch` (e.g. 80, 90).

    signature: Triton types of the runtime arguments by name ('*fp32', 'i32', ...); constexprs:
    the compile-time constants by name. Returns triton's CompiledKernel (`.asm['ptx']`,
    `.metadata.name`, `.metadata.shared`, `.metadata.num_warps`). Needs no GPU.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get('TRITON_INTERPRET') == '1':
        raise KernelCompileError('TRITON_INTERPRET=1 turns kernels into Python: compile PTX in a process without it')
    source = triton.compiler.ASTSource(
        fn=fn, signature={**signature, **{name: 'constexpr' for name in constexprs}}, constexprs=constexprs)
    try:
        return triton.compile(source, target=GPUTarget('cuda', int(arch), 32),
                              options={'num_warps': num_warps, 'enable_fp_fusion': False})
    except Exception as e:  # triton raises many types; the caller needs the kernel and the target
        raise KernelCompileError(f'compiling {fn.__name__} for sm_{arch} failed: {e}') from e
