"""Compiling the plugins' Triton kernels ahead of time, for a GPU that need not be present.

TensorRT's AOT plugins embed the PTX this returns. Every kernel is compiled without FMA
contraction (`enable_fp_fusion=False`), so `a * b - c` rounds after the product as in the numpy
references: the crop bounds and IoUs then agree to the bit.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from runtime.errors import ToolkitError

# The architectures the tests compile for: Ampere (A100, RTX 30xx) and Hopper (H100).
TEST_ARCHS = (80, 90)


class KernelCompileError(ToolkitError, RuntimeError):
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


def launchable_ptx(compiled, num_args: int) -> str:
    """The kernel's PTX with exactly its first `num_args` parameters, as a TensorRT AOT plugin
    launches it (inputs, int32 scalars, outputs).

    Triton appends pointer parameters for its global and profiling scratch memory, which TensorRT
    does not pass. They are removed when the kernel never reads them; a kernel that does needs
    memory a plugin cannot give, and is refused.
    """
    import re

    ptx = compiled.asm['ptx']
    name = compiled.metadata.name
    match = re.search(r'(\.entry\s+' + re.escape(name) + r'\s*\()([^)]*)\)', ptx)
    if match is None:
        raise KernelCompileError(f'no .entry {name} in the PTX')
    params = [p.strip() for p in match.group(2).split(',') if p.strip()]
    for param in params[num_args:]:
        param_name = param.split()[-1]
        if len(re.findall(r'\b' + re.escape(param_name) + r'\b', ptx)) > 1:
            raise KernelCompileError(f'{name} reads its extra parameter {param_name} (Triton scratch memory), '
                                     f'which a TensorRT AOT plugin cannot pass')
    kept = ',\n\t'.join(params[:num_args])
    return ptx[:match.start(2)] + '\n\t' + kept + '\n' + ptx[match.end(2):]


class AotKernel(NamedTuple):
    """A kernel ready for a TensorRT AOT plugin: PTX entry `name`, launched with `threads` threads
    per block and `shared_bytes` of dynamic shared memory."""

    name: str
    ptx: str
    threads: int
    shared_bytes: int


def compile_aot(fn, signature: dict, constexprs: dict, *, arch: int, num_warps: int) -> AotKernel:
    """compile_kernel + launchable_ptx: the kernel's parameters are exactly `signature`'s, in order."""
    compiled = compile_kernel(fn, signature, constexprs, arch=arch, num_warps=num_warps)
    return AotKernel(compiled.metadata.name, launchable_ptx(compiled, len(signature)),
                     compiled.metadata.num_warps * 32, compiled.metadata.shared)
