"""The kernels compile to PTX for sm_80 and sm_90 on a machine without a GPU, specialised as the
TensorRT plugins specialise them for yolact_base, with the launch signature TensorRT's AOT plugin
launcher uses. Runs `python -m plugins.compile_ptx` in a subprocess: this test process has
Triton's interpreter switched on (conftest.py), and compiling needs it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Pointers as .u64, int32 scalars as .u32: inputs, scalars, outputs, nothing after.
PARAM_TYPES = {'fast_nms': ['u64'] * 2 + ['u32'] + ['u64'] * 5,
               'mask_assembly': ['u64'] * 5 + ['u32'] * 3 + ['u64']}
STATIC_SHARED_LIMIT = 48 * 1024  # above it a launch needs an opt-in TensorRT's launcher does not make


def compile_ptx(*args: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.setdefault('TRITON_CACHE_DIR', str(ROOT / 'build' / 'triton-cache'))
    result = subprocess.run([sys.executable, '-m', 'plugins.compile_ptx', '--json', *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize('arch, dtype, mode', [(80, 'fp32', []), (90, 'fp16', ['--cross-class'])],
                         ids=['sm_80-fp32-per-class', 'sm_90-fp16-cross-class'])
def test_kernels_compile_to_launchable_ptx(arch, dtype, mode, tmp_path):
    kernels = compile_ptx('--config', 'yolact_base', '--arch', str(arch), '--dtype', dtype, '--out', str(tmp_path),
                          *mode)
    assert [k['kernel'] for k in kernels] == ['fast_nms', 'mask_assembly']
    for kernel in kernels:
        assert kernel['target'].startswith(f'sm_{arch}')
        assert kernel['entry'] == kernel['name']
        assert kernel['param_types'] == PARAM_TYPES[kernel['kernel']]
        assert 0 < kernel['shared_bytes'] <= STATIC_SHARED_LIMIT
        ptx = (tmp_path / f'{kernel["kernel"]}.sm_{arch}.{dtype}.ptx').read_text()
        assert f'.entry {kernel["name"]}(' in ptx
    nms = kernels[0]
    # exactness on the GPU: no multiply-add contraction, IoU by a correctly rounded division
    assert nms['fma_f32'] == 0 and nms['div_rn_f32'] > 0


def test_compile_ptx_names_an_unknown_config():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-m', 'plugins.compile_ptx', '--config', 'yolact_huge'], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and 'unknown config' in result.stderr and 'yolact_base' in result.stderr
