"""runtime.cuda.device, the one home of the GPU queries: the driver query works without cuda-python,
and what answers 'no GPU' where there is none."""

from types import SimpleNamespace

import pytest

from runtime.backends import ort_backend
from runtime.cuda import device


@pytest.fixture
def no_driver(monkeypatch):
    monkeypatch.setattr(device, 'LIBCUDA', 'libcuda-that-is-not-there.so.1')
    device.device_count.cache_clear()
    yield
    device.device_count.cache_clear()


def test_without_a_driver_there_is_no_device(no_driver, monkeypatch):
    def asked(*args):
        raise AssertionError('cuda-python was asked although the driver has no device')

    monkeypatch.setattr(device, 'device_info', asked)
    assert device.device_count() == 0
    assert device.cuda_device() is None


def test_onnxruntime_takes_the_cuda_provider_only_where_the_driver_has_a_device(monkeypatch):
    ort = SimpleNamespace(get_available_providers=lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    monkeypatch.setattr(ort_backend, 'device_count', lambda: 0)
    assert ort_backend.default_providers(ort) == ['CPUExecutionProvider']
    monkeypatch.setattr(ort_backend, 'device_count', lambda: 1)
    assert ort_backend.default_providers(ort) == ['CUDAExecutionProvider', 'CPUExecutionProvider']
