"""The DeformConv2d Triton kernel equals the float64 reference (on a CUDA device when there is one,
else under Triton's interpreter, see conftest.py), writes every output element, and agrees with the
ONNX function element for element in shape and dtype. The PTX test compiles it for sm_80 and sm_90
at YOLACT++'s specialisation, with the launch signature TensorRT's AOT plugin launcher uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.deform_conv.kernels import deform_conv2d as deform_conv_kernel
from plugins.deform_conv.reference import deform_conv2d
from tests.plugins.deform_conv_cases import CASES, assert_close, case
from tests.plugins.test_deform_conv_onnx import ATOL_FP16, ATOL_FP32, run as run_function

ROOT = Path(__file__).resolve().parents[2]
# The interpreter evaluates masked-out lanes too (out-of-image corners, padded channels).
pytestmark = pytest.mark.filterwarnings('ignore::RuntimeWarning')


def run_kernel(c, device, dtype=torch.float32):
    inputs = [torch.from_numpy(a).to(device, dtype) for a in c.inputs()]
    batch, out_channels = c.x.shape[0], c.weight.shape[0]
    out = torch.full((batch, out_channels, *c.offset.shape[2:]), float('nan'), dtype=dtype, device=device)
    y = deform_conv_kernel(*inputs, **c.attributes(), out=out)
    assert y is out
    return y.cpu().numpy() if dtype == torch.float32 else y.cpu()


@pytest.mark.parametrize('name', CASES)
def test_kernel_equals_reference(name, kernel_device):
    c = case(name, 0)
    got = run_kernel(c, kernel_device)
    expected = deform_conv2d(*(a.astype(np.float64) for a in c.inputs()), **c.attributes())
    assert_close(got, expected, atol=ATOL_FP32, what=name)  # NaN-filled output: every element written


@pytest.mark.parametrize('name', ['yolact-3x3-s2', 'deformable-groups-2', 'w1'])
def test_kernel_and_function_agree_index_for_index(name, kernel_device):
    """Same shape and dtype, every element within float32 rounding of each other."""
    c = case(name, 1)
    kernel, function = run_kernel(c, kernel_device), run_function(c)
    assert kernel.shape == function.shape and kernel.dtype == function.dtype == np.float32
    assert_close(kernel, function, atol=2 * ATOL_FP32, what=name)


def test_kernel_float16_inputs(kernel_device):
    c = case('yolact-3x3-s2', 3)
    got = run_kernel(c, kernel_device, torch.float16)
    assert got.dtype == torch.float16
    expected = deform_conv2d(*(a.astype(np.float16).astype(np.float64) for a in c.inputs()), **c.attributes())
    assert_close(got.float().numpy(), expected, atol=ATOL_FP16, what='float16')
    function = run_function(c, np.float16)
    assert function.dtype == np.float16 and function.shape == tuple(got.shape)


def test_kernel_launcher_names_bad_inputs():
    c = case('yolact-3x3-s1')
    x, offset, mask, weight, bias = (torch.from_numpy(a) for a in c.inputs())
    with pytest.raises(ValueError, match='offset must be'):
        deform_conv_kernel(x, offset[:, :4], mask, weight, bias, **c.attributes())
    with pytest.raises(ValueError, match='float32 or float16'):
        deform_conv_kernel(x.double(), offset, mask, weight, bias, **c.attributes())


# YOLACT++ ResNet-50's DCN layers: 3x3, padding 1, dilation 1, one deformable group; the widest is
# layer4's 512 channels. Pointers as .u64, int32 scalars as .u32: inputs, scalars, output, nothing after.
PTX_SCRIPT = '''
import json, sys
from plugins.compile_ptx import describe
from plugins.deform_conv.kernels import DeformConvKernelConfig, deform_conv_kernel, signature
from plugins.triton_compile import compile_aot
config = DeformConvKernelConfig(512, 512, (3, 3), (2, 2), (1, 1), (1, 1), 1)
for arch, dtype in json.loads(sys.argv[1]):
    kernel = compile_aot(deform_conv_kernel, signature(dtype), config.constexprs(), arch=arch,
                         num_warps=config.num_warps)
    print(json.dumps(describe(kernel, 'deform_conv', arch, dtype, 0.0)), flush=True)
'''
STATIC_SHARED_LIMIT = 48 * 1024  # above it a launch needs an opt-in TensorRT's launcher does not make


def test_kernel_compiles_to_launchable_ptx():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.setdefault('TRITON_CACHE_DIR', str(ROOT / 'build' / 'triton-cache'))
    env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
    targets = [(80, 'fp32'), (90, 'fp16')]
    result = subprocess.run([sys.executable, '-c', PTX_SCRIPT, json.dumps(targets)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(k['arch'], k['dtype']) for k in kernels] == targets
    for kernel in kernels:
        assert kernel['target'].startswith(f'sm_{kernel["arch"]}')
        assert kernel['entry'] == kernel['name']
        assert kernel['param_types'] == ['u64'] * 5 + ['u32'] * 4 + ['u64']
        assert 0 < kernel['shared_bytes'] <= STATIC_SHARED_LIMIT
        # (fma.rn.f32 does appear: an IEEE float32 tl.dot is lowered to FMAs, which round once per
        # product-sum like any float32 dot; the bilinear weights are not contracted.)
