"""The shipped YOLACT++ demo (runtime/assets/yolact_plus_tiny_shapes.pth) through the Python API:
the torch backend on the checkpoint, and onnxruntime on its export with the deformable convolutions
as yolact::DeformConv2d function nodes and the re-scoring in the graph, giving the same detections."""

import numpy as np
import onnx
import pytest

import runtime
from runtime.assets import DEMO_PLUS_MODEL, SAMPLE_IMAGE


@pytest.fixture(scope='module')
def torch_detections():
    with runtime.load(DEMO_PLUS_MODEL) as model:
        assert model.metadata.config == 'yolact_plus_tiny'
        (result,) = model(SAMPLE_IMAGE)
        return result, model.class_names


def test_the_demo_finds_every_shape_of_the_sample(torch_detections):
    """The sample holds one of each of the five classes; the trained model names them all."""
    result, class_names = torch_detections
    assert set(result.names) == set(class_names)
    assert result.masks.any(axis=(1, 2)).all()


@pytest.mark.slow  # it exports the model to ONNX first
def test_its_export_gives_the_same_detections_in_onnxruntime(torch_detections, tmp_path):
    from export.onnx_export import export_onnx
    from yolact_torch.checkpoint import load_model

    reference, cfg = load_model(DEMO_PLUS_MODEL)
    path = export_onnx(reference, cfg, tmp_path / 'plus.onnx')
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert nodes.count('DeformConv2d') == 4  # one per DCN: stages 2-4 of blocks 1-1-2-1
    with runtime.load(path) as model:
        assert 'onnxruntime' in model.description
        (result,) = model(SAMPLE_IMAGE)
    expected, _ = torch_detections
    assert result.names == expected.names
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-3)
    np.testing.assert_allclose(result.boxes, expected.boxes, atol=0.5)  # image pixels
    assert (result.masks != expected.masks).mean() < 1e-3
