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

from runtime.tensorrt.gpu_paste import PARAM_KINDS, PasteKernelUnavailable, load_paste_kernel, paste_on_gpu

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


def test_loader_says_why_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, 'runtime.tensorrt.paste_kernel', None)  # import fails as without triton
    with pytest.raises(PasteKernelUnavailable, match='triton is not installed.*pip install triton'):
        load_paste_kernel(np.float32)


def test_loader_refuses_masks_it_has_no_kernel_for():
    with pytest.raises(PasteKernelUnavailable, match='masks are float64'):
        load_paste_kernel(np.float64)


def test_device_for_images_at_least_the_prototype_grid():
    proto = (138, 138)
    assert paste_on_gpu((480, 640), proto) and paste_on_gpu((138, 138), proto) and paste_on_gpu((69, 276), proto)
    assert not paste_on_gpu((137, 138), proto) and not paste_on_gpu((1, 1), proto)
