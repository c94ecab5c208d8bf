"""The demo models exported once for the serving tests (detections on shapes images, unlike random weights):
YOLACT, and YOLACT++ for its box_scores."""

import pytest

from runtime.assets import DEMO_MODEL, DEMO_PLUS_MODEL


def export_demo(checkpoint, tmp_path_factory):
    from export.onnx_export import export_onnx
    from yolact_torch.checkpoint import load_model

    model, cfg = load_model(checkpoint)
    return export_onnx(model, cfg, tmp_path_factory.mktemp('serve') / checkpoint.with_suffix('.onnx').name)


@pytest.fixture(scope='session')
def demo_onnx(tmp_path_factory):
    return export_demo(DEMO_MODEL, tmp_path_factory)


@pytest.fixture(scope='session')
def demo_plus_onnx(tmp_path_factory):
    return export_demo(DEMO_PLUS_MODEL, tmp_path_factory)
