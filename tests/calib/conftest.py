"""Fixtures of the calibration tests: the stand-in model (tests/calib/standin.py) and images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.calib.standin import build_standin, smooth_images


@pytest.fixture(scope='session')
def standin() -> onnx.ModelProto:
    return build_standin()


@pytest.fixture(scope='session')
def standin_path(tmp_path_factory, standin):
    path = tmp_path_factory.mktemp('standin') / 'standin.onnx'
    onnx.save(standin, path)
    return path


@pytest.fixture(scope='session')
def calibration_pixels() -> np.ndarray:
    return smooth_images(8)
