"""Compile the plugins' Triton kernels to PTX for given GPU architectures, without a GPU.

    python -m plugins.compile_ptx --config yolact_base --arch 80 90 --dtype fp32 fp16 --out build/ptx

The kernels are specialised exactly as the TensorRT plugins specialise them for a model of that
config (its thresholds, top_k, max detections, class count, mask dimension, crop padding); the
runtime's paste kernel (paste_masks, the same for every model) is what `make ptx` ships as package
data in runtime/tensorrt/ptx/, so GPU hosts paste masks without triton. --out writes each PTX with
a JSON beside it: the line below plus the kernel's constexprs and the triton version. Prints
one line (or, with --json, one JSON object) per compiled kernel: its PTX entry name, parameters
(exactly the plugin's inputs, int32 scalars and outputs), shared memory, and the properties the
exactness relies on (no FMA contraction in Fast NMS, correctly rounded division).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from plugins.triton_compile import TEST_ARCHS, AotKernel, KernelCompileError, compile_aot
from runtime.files import write_atomic


def kernel_specs(config, *, cross_class: bool):
    """(name, jit function, signature(float_type) callable, constexprs, num_warps) of the plugins'
    kernels for a model config (yolact_torch.config.YolactConfig), and of the runtime's paste kernel."""
    from plugins.fast_nms import kernels as nms
    from plugins.mask_assembly import kernels as masks
    from runtime.tensorrt import paste_kernel as paste

    nms_config = nms.FastNMSKernelConfig(
        config.conf_thresh, config.nms_thresh, config.nms_top_k, config.max_num_detections, cross_class,
        len(config.class_names))
    mask_config = masks.MaskAssemblyKernelConfig(config.max_num_detections, config.mask_dim, config.crop_padding)
    return [('fast_nms', nms.fast_nms_kernel, nms.signature, nms_config.constexprs(), nms_config.num_warps),
            ('mask_assembly', masks.mask_assembly_kernel, masks.signature, mask_config.constexprs(),
             mask_config.num_warps),
            ('paste_masks', paste.paste_masks_kernel, paste.signature, paste.PasteKernelConfig().constexprs(),
             paste.PasteKernelConfig().num_warps)]


def describe(kernel: AotKernel, name: str, arch: int, float_type: str, seconds: float) -> dict:
    """What the tests and the plugins rely on, read off the launchable PTX."""
    entry = re.search(r'\.entry\s+(\w+)\s*\(([^)]*)\)', kernel.ptx)
    return {
        'kernel': name, 'arch': arch, 'dtype': float_type, 'entry': entry.group(1) if entry else None,
        'name': kernel.name, 'num_params': entry.group(2).count('.param') if entry else 0,
        'param_types': re.findall(r'\.param\s+\.(\w+)', entry.group(2)) if entry else [],
        'target': (re.search(r'\.target\s+(\w+)', kernel.ptx) or [None, None])[1],
        'shared_bytes': kernel.shared_bytes, 'threads': kernel.threads,
        'fma_f32': len(re.findall(r'\bfma\.rn\.f32\b', kernel.ptx)),
        'div_rn_f32': len(re.findall(r'\bdiv\.rn\.f32\b', kernel.ptx)),
        'ptx_chars': len(kernel.ptx), 'seconds': round(seconds, 1)}


def triton_version() -> str:
    import triton

    return triton.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m plugins.compile_ptx', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='yolact_base', help='model config whose attributes specialise the kernels')
    parser.add_argument('--arch', type=int, nargs='+', default=list(TEST_ARCHS),
                        help='CUDA compute capabilities, e.g. 80 (A100) 86 89 90 (H100)')
    parser.add_argument('--dtype', nargs='+', choices=('fp32', 'fp16'), default=['fp32'],
                        help='float type of the kernels\' float inputs and outputs')
    parser.add_argument('--kernel', nargs='+', choices=('fast_nms', 'mask_assembly', 'paste_masks'),
                        default=['fast_nms', 'mask_assembly'],
                        help='which kernels to compile (paste_masks: the runtime\'s, the same for every '
                             'config)')
    parser.add_argument('--cross-class', action='store_true', help='Fast NMS across classes instead of per class')
    parser.add_argument('--out', type=Path, help='folder to write <kernel>.sm_<arch>.<dtype>.ptx into')
    parser.add_argument('--json', action='store_true', help='print one JSON object per kernel instead of a table')
    args = parser.parse_args(argv)

    # No line info: it names the source file's absolute path, so shipped PTX would change with the
    # folder it was compiled in (and it doubles the PTX's size); nothing reads it at run time.
    os.environ['TRITON_DISABLE_LINE_INFO'] = '1'
    from yolact_torch.config import ConfigError, get_config

    try:
        config = get_config(args.config)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    specs = [spec for spec in kernel_specs(config, cross_class=args.cross_class) if spec[0] in args.kernel]
    for arch in args.arch:
        for float_type in args.dtype:
            for name, fn, signature, constexprs, num_warps in specs:
                start = time.perf_counter()
                try:
                    kernel = compile_aot(fn, signature(float_type), constexprs, arch=arch, num_warps=num_warps)
                except KernelCompileError as e:
                    print(f'error: {e}', file=sys.stderr)
                    return 1
                info = describe(kernel, name, arch, float_type, time.perf_counter() - start)
                if args.out:
                    stem = f'{name}.sm_{arch}.{float_type}'
                    write_atomic(args.out / f'{stem}.ptx', kernel.ptx.encode())
                    descriptor = dict(info, constexprs=constexprs, triton=triton_version())
                    del descriptor['seconds']  # the file stays the same when nothing changed
                    write_atomic(args.out / f'{stem}.json', (json.dumps(descriptor, indent=1) + '\n').encode())
                if args.json:
                    print(json.dumps(info), flush=True)
                else:
                    print(f'{name:14s} sm_{arch} {float_type}  entry {info["entry"]}  params {info["num_params"]}  '
                          f'shared {info["shared_bytes"]} B  threads {info["threads"]}  {info["seconds"]} s', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
