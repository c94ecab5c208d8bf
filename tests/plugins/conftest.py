"""Kernel tests run the Triton kernels on a CUDA device when there is one, else under Triton's
interpreter on CPU tensors. The interpreter has to be switched on before triton is first imported
(its own library functions are compiled at import), so it is done here, at collection."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault('TRITON_CACHE_DIR', str(ROOT / 'build' / 'triton-cache'))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


KERNEL_DEVICE = 'cuda' if _cuda_available() else 'cpu'
if KERNEL_DEVICE == 'cpu' and os.environ.get('TRITON_INTERPRET') != '1':
    if 'triton' in sys.modules:
        raise RuntimeError('triton was imported before tests/plugins/conftest.py could set TRITON_INTERPRET=1; '
                           'run with TRITON_INTERPRET=1 in the environment')
    os.environ['TRITON_INTERPRET'] = '1'


@pytest.fixture(scope='session')
def kernel_device() -> str:
    """'cuda', or 'cpu' with Triton's interpreter."""
    return KERNEL_DEVICE
