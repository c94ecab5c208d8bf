"""Fixtures of the engine tests: toy models written to a temporary folder (tests/engines/toy_models.py)."""

from __future__ import annotations

import onnx
import pytest

from tests.engines.toy_models import toy_model


@pytest.fixture
def write_toy(tmp_path):
    """write_toy(precision='fp32', name=None, **toy_model options) -> path of a saved toy model."""
    def write(precision: str = 'fp32', name: str | None = None, **options):
        path = tmp_path / (name or f'toy.{precision}.onnx')
        onnx.save_model(toy_model(precision, **options), path)
        return path
    return write
