"""Choosing TensorRT or TensorRT-RTX, their compute-capability targets, and the log bridge."""

from __future__ import annotations

import logging
import sys

import pytest

from engines.errors import EngineBuildError
from engines.trt import choose_compute_capabilities
from runtime.tensorrt.loader import TensorRTError, TensorRTUnavailable, load_tensorrt, make_logger

rtx_module = pytest.importorskip('tensorrt_rtx', reason='TensorRT-RTX is not installed (pip install -e .[tensorrt-rtx])')


@pytest.fixture(scope='module')
def rtx():
    return load_tensorrt('tensorrt-rtx')


def test_loads_tensorrt_rtx(rtx):
    assert (rtx.flavour, rtx.version, rtx.is_rtx) == ('tensorrt_rtx', rtx_module.__version__, True)
    assert rtx.display_name == f'TensorRT-RTX {rtx_module.__version__}'


def test_no_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, 'tensorrt_rtx', None)
    with pytest.raises(TensorRTUnavailable) as info:
        load_tensorrt('auto')
    message = str(info.value)
    assert message.startswith('TensorRT is not installed')
    assert "pip install -e '.[tensorrt]'" in message and "pip install -e '.[tensorrt-rtx]'" in message


def test_unknown_flavour():
    with pytest.raises(TensorRTError, match="unknown TensorRT flavour 'onnxruntime'"):
        load_tensorrt('onnxruntime')


def test_default_targets_are_ampere_and_newer(rtx):
    targets = choose_compute_capabilities(rtx, None, None)
    assert '7.5' not in targets and '9.0' not in targets
    assert {'8.0', '8.6', '8.9', '12.0'} <= set(targets)


def test_targets_by_name(rtx):
    assert choose_compute_capabilities(rtx, '8.6, sm120,86', None) == ('8.6', '12.0')
    assert choose_compute_capabilities(rtx, '7.5', None) == ('7.5',)
    assert choose_compute_capabilities(rtx, 'current', ('NVIDIA GeForce RTX 4090', '8.9')) == ('8.9',)


def test_unsupported_targets(rtx):
    with pytest.raises(EngineBuildError, match=r"cannot build for compute capability '9.0'; it targets 7.5, 8.0"):
        choose_compute_capabilities(rtx, '9.0', None)
    with pytest.raises(EngineBuildError, match='current needs a CUDA GPU'):
        choose_compute_capabilities(rtx, 'current', None)


@pytest.mark.parametrize('verbose, expected', [
    (False, [(logging.WARNING, 'careful'), (logging.ERROR, 'broken')]),
    (True, [(logging.DEBUG, 'detail'), (logging.INFO, 'note'), (logging.WARNING, 'careful'),
            (logging.ERROR, 'broken')]),
])
def test_logger_forwards_by_severity(rtx, caplog, verbose, expected):
    severity = rtx.module.ILogger.Severity
    logger = make_logger(rtx, verbose)
    with caplog.at_level(logging.DEBUG, logger='engines.tensorrt'):
        for level, text in [(severity.VERBOSE, 'detail'), (severity.INFO, 'note'), (severity.WARNING, 'careful'),
                            (severity.ERROR, 'broken')]:
            logger.log(level, text)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (level, f'[tensorrt_rtx] {text}') for level, text in expected]
