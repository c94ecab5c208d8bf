import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from calib.fp16 import convert_fp16
from calib.graph import model_metadata, preprocessing_nodes, split_postprocess
from tests.calib.standin import COEF_CONV, PROTO_CONV, smooth_images


def run(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {'images': images})))


def weight_types(model: onnx.ModelProto) -> dict[str, int]:
    """Conv name -> element type of its weight initializer."""
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    return {n.name: initializers.get(n.input[1]) for n in model.graph.node if n.op_type == 'Conv'}


@pytest.fixture(scope='module')
def fp16(standin, calibration_pixels):
    return convert_fp16(standin, calibration_pixels)


def test_fp16_passes_the_checker_and_keeps_the_io_types(standin, fp16):
    onnx.checker.check_model(fp16, full_check=True)
    assert model_metadata(fp16).precision == 'fp16'
    for ours, theirs in ((fp16.graph.input, standin.graph.input), (fp16.graph.output, standin.graph.output)):
        assert [(v.name, v.type.tensor_type.elem_type) for v in ours] == \
               [(v.name, v.type.tensor_type.elem_type) for v in theirs]
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_fp16_converts_the_network_and_not_the_postprocessing(standin, fp16):
    assert set(weight_types(fp16).values()) == {TensorProto.FLOAT16}
    # The function bodies are the original's, and read FP32 tensors.
    assert [f.SerializeToString() for f in fp16.functions] == [f.SerializeToString() for f in standin.functions]
    values = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(fp16).graph.value_info}
    for node in fp16.graph.node:
        if node.domain == 'yolact':
            assert {values[i] for i in node.input if i in values} <= {TensorProto.FLOAT, TensorProto.INT32}, node.name


def test_fp16_outputs_stay_close_to_fp32(standin, fp16):
    images = smooth_images(4, seed=5)
    expected, actual = run(standin, images), run(fp16, images)
    np.testing.assert_array_equal(actual['num_dets'], expected['num_dets'])
    np.testing.assert_allclose(actual['masks'], expected['masks'], atol=1e-2)


def test_keep_sensitive_keeps_the_mask_convolutions_in_fp32(standin, calibration_pixels):
    kept = weight_types(convert_fp16(standin, calibration_pixels, keep_sensitive=True))
    assert kept.pop(PROTO_CONV) == kept.pop(COEF_CONV) == TensorProto.FLOAT
    assert set(kept.values()) == {TensorProto.FLOAT16}


def test_the_preprocessing_stays_fp32(standin, fp16):
    """The cast, resize and normalisation compute in float32: no node of theirs reads or writes float16."""
    inferred = onnx.shape_inference.infer_shapes(fp16)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    nodes = {n.name: n for n in fp16.graph.node}
    preprocessing = preprocessing_nodes(split_postprocess(standin).network)
    assert len(preprocessing) == 5
    for name in preprocessing:
        tensors = [t for t in [*nodes[name].input, *nodes[name].output] if t in types]
        assert TensorProto.FLOAT16 not in {types[t] for t in tensors}, name
    # And the network itself did become FP16 (else this proves nothing).
    assert TensorProto.FLOAT16 in set(weight_types(fp16).values())


def test_images_of_several_sizes_calibrate_and_run(standin):
    """The runtime sends images at their own size; AutoCast gets one batch per size."""
    images = [*smooth_images(2, size=24, seed=3), *smooth_images(1, size=40, seed=4)[:, :, :30]]
    converted = convert_fp16(standin, images)
    outputs = run(converted, images[2][None])
    assert np.isfinite(outputs['masks']).all()
