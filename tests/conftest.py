"""Shared test set-up. Tests marked `gpu` need TensorRT and an NVIDIA GPU; elsewhere they skip and
say why (a skipped GPU test has not passed: the GPU workflow runs them)."""

import functools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA device are usable, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'TensorRT is not installed (GPU hosts: pip install -e .[tensorrt])'
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        return 'cuda-python is not installed (pip install cuda-python)'
    from runtime.cuda.device import cuda_device

    if cuda_device() is None:
        return 'no CUDA device is visible'
    return None


def pytest_collection_modifyitems(config, items):
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    for item in items:
        # The marker itself, not keywords: a folder named tests/gpu would match keywords too.
        if item.get_closest_marker('gpu') is not None:
            item.add_marker(pytest.mark.skip(reason=f'gpu test: {reason}'))


@pytest.fixture(autouse=True, scope='session')
def _two_threads():
    """Tests run on 2-core machines: keep torch from oversubscribing them."""
    os.environ.setdefault('OMP_NUM_THREADS', '2')
    yield
