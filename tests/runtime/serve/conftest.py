"""The demo model exported once for the serving tests (detections on shapes images, unlike random weights)."""

import pytest

from runtime.assets import DEMO_MODEL


@pytest.fixture(scope='session')
def demo_onnx(tmp_path_factory):
    from export.onnx_export import export_onnx
    from yolact_torch.checkpoint import load_model

    model, cfg = load_model(DEMO_MODEL)
    return export_onnx(model, cfg, tmp_path_factory.mktemp('serve') / 'yolact_tiny_shapes.onnx')
