"""runtime.tensorrt.gpu_paste without a GPU: the paste kernel compiles to PTX for sm_80 and sm_90 with the
parameters the driver-API launcher passes, without torch; the kernel loader says why it cannot
run; the device-or-host rule. (The kernel's arithmetic: test_paste_kernel.py; the lanes' use of
it: test_trt_gpu_paste.py; the real device: the gpu test there.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.tensorrt import gpu_paste
from runtime.tensorrt.gpu_paste import (PARAM_KINDS, SHIPPED_PTX, PasteKernelUnavailable, load_paste_kernel,
                                         paste_on_gpu, shipped_paste_ptx)

ROOT = Path(__file__).resolve().parents[3]
# How each launcher parameter kind appears in the PTX entry.
PTX_PARAM_TYPES = {'ptr': 'u64', 'i32': 'u32', 'f32': 'f32'}
COMPILE_AND_DESCRIBE = """
import json, sys
from plugins.compile_ptx import describe
from runtime.tensorrt.gpu_paste import compile_paste_kernel
for arch, dtype in {cases}:
    kernel = compile_paste_kernel(arch, dtype)
    info = describe(kernel, 'paste_masks', arch, dtype, 0.0)
    print(json.dumps(dict(info, torch_imported='torch' in sys.modules, ftz='.ftz' in kernel.ptx)))
"""


def test_kernel_compiles_to_launchable_ptx_without_torch():
    """What TrtBackend compiles at load, for Ampere (fp32 masks) and Hopper (fp16 masks): in a
    subprocess, because compiling needs Triton's interpreter off and the import check a fresh process."""
    pytest.importorskip('triton')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.setdefault('TRITON_CACHE_DIR', str(ROOT / 'build' / 'triton-cache'))
    script = COMPILE_AND_DESCRIBE.format(cases=[(80, 'float32'), (90, 'float16')])
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(k['arch'], k['dtype']) for k in kernels] == [(80, 'float32'), (90, 'float16')]
    for kernel in kernels:
        assert kernel['target'].startswith(f'sm_{kernel["arch"]}')
        assert kernel['entry'] == kernel['name'] == 'paste_masks_kernel'
        assert kernel['param_types'] == [PTX_PARAM_TYPES[kind] for kind in PARAM_KINDS]
        assert kernel['threads'] == 128 and kernel['shared_bytes'] == 0
        # paste_masks' rounding on the device: separate multiplies and adds, no flush to zero
        assert kernel['fma_f32'] == 0 and not kernel['ftz']
        assert not kernel['torch_imported'], 'the TensorRT path must not import torch'


def test_loader_says_why_without_triton_on_a_gpu_older_than_the_shipped_ptx(monkeypatch):
    monkeypatch.setattr(gpu_paste, 'device_info', lambda: {'compute_capability': '7.5'})
    monkeypatch.setitem(sys.modules, 'runtime.tensorrt.paste_kernel', None)  # import fails as without triton
    with pytest.raises(PasteKernelUnavailable, match='no shipped PTX runs on sm_75 and triton is not installed.*'
                                                     'pip install triton'):
        load_paste_kernel(np.float32)


def test_shipped_ptx_for_the_highest_architecture_the_gpu_runs():
    assert shipped_paste_ptx(75, np.float32) is None
    for compute_capability, dtype in ((80, np.float32), (90, np.float16), (120, np.float32)):
        ptx, info = shipped_paste_ptx(compute_capability, dtype)
        assert '.target sm_80' in ptx and info['arch'] == 80
        assert info['dtype'] == {np.float32: 'fp32', np.float16: 'fp16'}[dtype]
        assert f'.entry {info["name"]}(' in ptx
        assert info['param_types'] == [PTX_PARAM_TYPES[kind] for kind in PARAM_KINDS]
        assert info['fma_f32'] == 0  # paste_masks' rounding: separate multiplies and adds


def test_loader_launches_the_shipped_ptx_without_triton(monkeypatch):
    """A GPU host installed without triton (the gpu profile) loads the PTX shipped in the package."""
    from runtime.cuda import module

    class RecordedKernel:
        def __init__(self, ptx, name, param_kinds, *, threads, shared_bytes):
            self.ptx, self.name, self.param_kinds, self.threads, self.shared_bytes = ptx, name, param_kinds, threads, \
                shared_bytes

    monkeypatch.setattr(gpu_paste, 'device_info', lambda: {'compute_capability': '9.0'})
    monkeypatch.setattr(module, 'PtxKernel', RecordedKernel)
    monkeypatch.setitem(sys.modules, 'triton', None)
    monkeypatch.setitem(sys.modules, 'runtime.tensorrt.paste_kernel', None)
    kernel, block_hw = load_paste_kernel(np.float16)
    assert kernel.ptx == (SHIPPED_PTX / 'paste_masks.sm_80.fp16.ptx').read_text()
    assert (kernel.name, kernel.param_kinds, kernel.threads, kernel.shared_bytes) == (
        'paste_masks_kernel', PARAM_KINDS, 128, 0)
    assert block_hw == (4, 128)


def test_shipped_ptx_is_what_make_ptx_compiles_now(tmp_path):
    """The shipped PTX is current: `make ptx` with the triton it was compiled with gives the same files."""
    triton = pytest.importorskip('triton')
    shipped = sorted(SHIPPED_PTX.iterdir())
    compiled_with = {json.loads(p.read_text())['triton'] for p in shipped if p.suffix == '.json'}
    if compiled_with != {triton.__version__}:
        pytest.skip(f'the shipped PTX was compiled with triton {compiled_with}, this is {triton.__version__}: '
                    'compare after make ptx')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.setdefault('TRITON_CACHE_DIR', str(ROOT / 'build' / 'triton-cache'))
    result = subprocess.run([sys.executable, '-m', 'plugins.compile_ptx', '--kernel', 'paste_masks', '--arch', '80',
                             '--dtype', 'fp32', 'fp16', '--out', str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in shipped] == sorted(p.name for p in tmp_path.iterdir())
    for path in shipped:
        assert (tmp_path / path.name).read_text() == path.read_text(), f'{path.name} is stale: run make ptx'


def test_loader_refuses_masks_it_has_no_kernel_for():
    with pytest.raises(PasteKernelUnavailable, match='masks are float64'):
        load_paste_kernel(np.float64)


def test_device_for_images_at_least_the_prototype_grid():
    proto = (138, 138)
    assert paste_on_gpu((480, 640), proto) and paste_on_gpu((138, 138), proto) and paste_on_gpu((69, 276), proto)
    assert not paste_on_gpu((137, 138), proto) and not paste_on_gpu((1, 1), proto)
