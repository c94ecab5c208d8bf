import numpy as np
import onnx
import onnxruntime as ort
import pytest

from calib.graph import (CalibrationError, after_last_convolutions, join_postprocess, model_metadata, module_names,
                         preprocessing_nodes, producing_convs, split_postprocess)
from tests.calib.standin import COEF_CONV, DCN, DECODE_MUL, OPSET, PROTO_CONV, build_standin, raw_export_like


def run(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {'images': images})))


def test_split_cuts_before_the_function_calls(standin):
    split = split_postprocess(standin)
    assert {n.op_type for n in split.network.graph.node}.isdisjoint({'FastNMS', 'MaskAssembly'})
    assert [n.op_type for n in split.postprocess_nodes] == ['FastNMS', 'MaskAssembly']
    # The network hands the post-processing exactly what it reads.
    assert [o.name for o in split.network.graph.output] == ['boxes', 'scores', 'proto', 'coef']
    assert split.mask_inputs == ('proto', 'coef')
    assert not split.network.functions
    onnx.checker.check_model(split.network, full_check=True)


def test_a_deformable_conv_call_belongs_to_the_network():
    """YOLACT++'s yolact::DeformConv2d calls sit inside the network: the cut is still before the
    post-processing (a cut at the first call would leave the rest FP32 under an fp16/int8 label)."""
    split = split_postprocess(build_standin(deformable=True))
    assert [n.op_type for n in split.postprocess_nodes] == ['FastNMS', 'MaskAssembly']
    assert [o.name for o in split.network.graph.output] == ['boxes', 'scores', 'proto', 'coef']
    assert [c.node.name for c in split.deform_convs] == [DCN]


def test_split_then_join_is_the_same_model(standin, calibration_pixels):
    split = split_postprocess(standin)
    joined = join_postprocess(split.network, split, 'fp32')
    onnx.checker.check_model(joined, full_check=True)
    assert [f.name for f in joined.functions] == ['FastNMS', 'MaskAssembly']
    expected, actual = run(standin, calibration_pixels), run(joined, calibration_pixels)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])


def test_join_sets_the_precision_and_the_function_opset(standin):
    split = split_postprocess(standin)
    network = onnx.version_converter.convert_version(split.network, OPSET + 1)
    joined = join_postprocess(network, split, 'int8')
    assert model_metadata(joined).precision == 'int8'
    assert model_metadata(joined).class_names == model_metadata(standin).class_names
    assert {f.opset_import[0].version for f in joined.functions} == {OPSET + 1}
    onnx.checker.check_model(joined, full_check=True)


def test_sensitive_layers_are_the_convolutions_feeding_the_mask_inputs(standin):
    split = split_postprocess(standin)
    assert sorted(producing_convs(split.network, split.mask_inputs)) == sorted([PROTO_CONV, COEF_CONV])


def test_a_model_without_postprocessing_is_all_network(standin, calibration_pixels):
    raw = raw_export_like(standin)
    split = split_postprocess(raw)
    assert split.postprocess_nodes == ()
    assert len(split.network.graph.node) == len(raw.graph.node)
    assert split.mask_inputs == ('proto', 'coef')
    # The constant output is not the network's to convert, and comes back on joining.
    joined = join_postprocess(split.network, split, 'fp16')
    onnx.checker.check_model(joined, full_check=True)
    assert [o.name for o in joined.graph.output] == ['boxes', 'scores', 'proto', 'coef', 'priors']
    np.testing.assert_array_equal(run(joined, calibration_pixels)['priors'], run(raw, calibration_pixels)['priors'])


def test_a_model_without_metadata_is_refused():
    model = build_standin()
    del model.metadata_props[:]
    with pytest.raises(CalibrationError, match='metadata'):
        model_metadata(model)


def test_the_tail_after_the_last_convolutions(standin):
    network = split_postprocess(standin).network
    tail = after_last_convolutions(network)
    assert DECODE_MUL in tail and 'decode_add' in tail and 'scores_activation' in tail and 'proto_nhwc' in tail
    assert not {'normalise_div', 'to_nchw', 'backbone.relu2'} & set(tail)
    assert not [n for n in network.graph.node if n.name in tail and n.op_type == 'Conv']


def test_the_preprocessing_is_everything_before_the_first_convolution(standin):
    assert preprocessing_nodes(split_postprocess(standin).network) == ['cast_input', 'resize_to_input', 'normalise_sub', 'normalise_div', 'to_nchw']


def test_module_names_come_from_the_weights_and_a_shared_weight_counts_once(standin):
    network = split_postprocess(standin).network
    assert module_names(network, ['backbone.conv1', 'backbone.conv2', PROTO_CONV]) == ('conv1', 'proto')


def test_join_makes_the_deform_conv_body_for_the_converted_opset(calibration_pixels):
    """GridSample-20 renamed its 'bilinear' mode 'linear': a restamped opset-19 body would not run."""
    plus = build_standin(deformable=True)
    split = split_postprocess(plus)
    joined = join_postprocess(onnx.version_converter.convert_version(split.network, OPSET + 1), split, 'fp32')
    onnx.checker.check_model(joined, full_check=True)
    body = next(f for f in joined.functions if f.name == 'DeformConv2d')
    assert body.opset_import[0].version == OPSET + 1
    assert [c.node.name for c in split.deform_convs] == [n.name for n in joined.graph.node
                                                         if n.op_type == 'DeformConv2d']
    expected, actual = run(plus, calibration_pixels), run(joined, calibration_pixels)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-6)


def test_a_deformable_conv_call_without_its_function_body_is_refused():
    model = build_standin(deformable=True)
    model.functions.pop()  # DeformConv2d's, the last
    with pytest.raises(CalibrationError, match='no function body .* re-export'):
        split_postprocess(model)
