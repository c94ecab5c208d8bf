"""FP16 and INT8 of YOLACT++ models: each deformable convolution stays one FP32 `yolact::DeformConv2d`
call (the node TensorRT's parser maps to the plugin, its function body what onnxruntime runs), on
the stand-in with a deformable block (tests/calib/standin.py)."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from calib.cache import read_amax
from calib.deform_conv import BODY_MARK
from calib.fp16 import convert_fp16
from calib.graph import join_postprocess, split_postprocess
from calib.quantize import quantize_int8
from plugins import DEFORM_CONV_OP, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.deform_conv.onnx_function import make_function
from runtime.backends.ort_backend import create_session
from tests.calib.standin import DCN, OFFSET_CONV, OPSET, build_standin, smooth_images

DEFORM_CONV = (DOMAIN, DEFORM_CONV_OP)


def run(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of `model` in the session the runtime makes (its integer kernels are chosen per CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'model.onnx'
        onnx.save(model, path)
        session = create_session(path, providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {'images': images})))


def calls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if (n.domain, n.op_type) == DEFORM_CONV]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def weight_dtype(model: onnx.ModelProto, conv_name: str) -> str:
    """'int8' where the Conv's weight comes from a DequantizeLinear, else the weight's float type."""
    conv = next(n for n in model.graph.node if n.name == conv_name)
    made_by = producers(model)
    weight = conv.input[1]
    if weight in made_by and made_by[weight].op_type == 'DequantizeLinear':
        return 'int8'
    while weight in made_by:  # a Cast autocast put in front
        weight = made_by[weight].input[0]
    return TensorProto.DataType.Name(elem_types(model)[weight])


@pytest.fixture(scope='module')
def plus():
    return build_standin(deformable=True)


@pytest.fixture(scope='module')
def conversions(plus, calibration_pixels, tmp_path_factory):
    """FP16 and both INT8 layouts of the YOLACT++ stand-in, offsets quantised and kept FP32."""
    cache = tmp_path_factory.mktemp('cache')
    out = {}
    for keep_offsets in (False, True):
        out['fp16', keep_offsets] = convert_fp16(plus, calibration_pixels, keep_offsets=keep_offsets)
        for layout in ('tensorrt', 'onnxruntime'):
            out[layout, keep_offsets] = quantize_int8(plus, calibration_pixels, keep_offsets=keep_offsets,
                                                      cache_dir=cache, model_name='plus', layout=layout)
    return out


def model_of(result) -> onnx.ModelProto:
    return getattr(result, 'model', result)


def test_the_split_inlines_each_call_under_names_marking_it(plus):
    split = split_postprocess(plus)
    body = make_function(OPSET).node
    assert not calls(split.network)
    inlined = [n for n in split.network.graph.node if n.name.startswith(DCN + BODY_MARK)]
    assert [n.name for n in inlined] == [f'{DCN}{BODY_MARK}{i}' for i in range(len(body))]
    assert [n.op_type for n in inlined] == [n.op_type for n in body]
    original = calls(plus)[0]
    # Internal tensors carry the prefix; the body reads the call's inputs and writes its output.
    crossing = {i for n in inlined for i in n.input if i and not i.startswith(DCN + BODY_MARK)}
    assert crossing == set(original.input)
    assert {o for n in inlined for o in n.output if not o.startswith(DCN + BODY_MARK)} == set(original.output)
    assert not any(a.ref_attr_name for n in inlined for a in n.attribute)
    onnx.checker.check_model(split.network, full_check=True)


def test_split_then_join_gives_the_call_back_exactly(plus, calibration_pixels):
    split = split_postprocess(plus)
    joined = join_postprocess(split.network, split, 'fp32')
    onnx.checker.check_model(joined, full_check=True)
    assert calls(joined) == calls(plus)
    assert [f.name for f in joined.functions] == [f.name for f in plus.functions]
    expected, actual = run(plus, calibration_pixels), run(joined, calibration_pixels)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])


@pytest.mark.parametrize('variant', ['fp16', 'tensorrt', 'onnxruntime'])
def test_each_deformable_conv_stays_one_fp32_call_with_its_attributes(plus, conversions, variant):
    model = model_of(conversions[variant, False])
    onnx.checker.check_model(model, full_check=True)
    (original,), (call,) = calls(plus), calls(model)
    assert call.name == original.name
    assert list(call.attribute) == list(original.attribute)
    attributes = {a.name: a.s.decode() for a in call.attribute if a.type == onnx.AttributeProto.STRING}
    assert attributes == {'plugin_namespace': PLUGIN_NAMESPACE, 'plugin_version': PLUGIN_VERSION}
    function = next(f for f in model.functions if (f.domain, f.name) == DEFORM_CONV)
    assert function.node and not any(BODY_MARK in n.name for n in model.graph.node)
    types = elem_types(model)
    assert [types[name] for name in (*call.input, *call.output)] == [TensorProto.FLOAT] * 6
    # The weights are the FP32 model's own; the activations come through what the conversion put in
    # front of the call: a Cast from FP16, a DequantizeLinear from INT8.
    assert list(call.input[3:]) == list(original.input[3:])
    made_by = producers(model)
    x_producer = made_by[call.input[0]]
    if variant == 'fp16':
        assert x_producer.op_type == 'Cast' and types[x_producer.input[0]] == TensorProto.FLOAT16
        assert types[made_by[original.input[1]].output[0]] == TensorProto.FLOAT16  # the offsets were FP16
    else:
        assert x_producer.op_type == 'DequantizeLinear'


# Mean error of the network's outputs over their largest value, at most (coef, offsets quantised or
# not alike) 2e-4 for FP16, 0.010 for INT8 in the tensorrt layout and 0.009 in the onnxruntime one, on
# an AMD EPYC (onnxruntime 1.24): the bounds of YOLACT's stand-in (test_fp16.py, test_quantize.py)
# hold with the deformable block in. FP16's is FP16's rounding (2^-11) with room for a few layers.
NETWORK_ERROR = {'fp16': 0.002, 'tensorrt': 0.03, 'onnxruntime': 0.015}


@pytest.mark.parametrize('keep_offsets', [False, True])
@pytest.mark.parametrize('variant', ['fp16', 'tensorrt', 'onnxruntime'])
def test_the_converted_network_stays_close_to_fp32(plus, conversions, variant, keep_offsets):
    images = smooth_images(4, seed=7)  # not the calibration images
    # The split inlines the call again: the network alone, run with the body, as onnxruntime runs the call.
    expected = run(split_postprocess(plus).network, images)
    actual = run(split_postprocess(model_of(conversions[variant, keep_offsets])).network, images)
    for name in ('boxes', 'scores', 'proto', 'coef'):
        error = np.abs(actual[name] - expected[name]).mean() / np.abs(expected[name]).max()
        assert error < NETWORK_ERROR[variant], name


@pytest.mark.parametrize('variant', ['fp16', 'tensorrt', 'onnxruntime'])
def test_keep_offsets_changes_exactly_the_offset_convolution(conversions, variant):
    quantised, kept = model_of(conversions[variant, False]), model_of(conversions[variant, True])
    low = 'FLOAT16' if variant == 'fp16' else 'int8'
    convs = [n.name for n in kept.graph.node if n.op_type == 'Conv']
    assert weight_dtype(quantised, OFFSET_CONV) == low and weight_dtype(kept, OFFSET_CONV) == 'FLOAT'
    assert ({name: weight_dtype(kept, name) for name in convs if name != OFFSET_CONV}
            == {name: weight_dtype(quantised, name) for name in convs if name != OFFSET_CONV})
    if variant != 'fp16':
        assert OFFSET_CONV in conversions[variant, True].kept_fp32
        assert OFFSET_CONV not in conversions[variant, False].kept_fp32


def test_calibration_skips_the_body_but_ranges_its_inputs_and_output(plus, conversions):
    """The body's ~130 internal tensors get no range (nothing around them is quantised): the only one
    calibrated is what its last node reads, as the calibrator ranges a chosen node's inputs too."""
    amax = read_amax(conversions['tensorrt', False].cache)
    call = calls(plus)[0]
    assert len([name for name in amax if BODY_MARK in name]) == 1
    assert {call.input[0], call.output[0]} <= amax.keys()


def test_a_body_reading_fp16_gets_the_call_an_fp32_input_and_its_fp16_output_back(plus, calibration_pixels):
    """A converter that leaves the body's own leading Cast to read an FP16 input (autocast puts a
    Cast of its own there today): the body's CastLike then made y FP16, which the network reads."""
    split = split_postprocess(plus)
    (x, *_), (y,) = calls(plus)[0].input, calls(plus)[0].output
    nodes = []
    for node in split.network.graph.node:
        inside = node.name.startswith(DCN + BODY_MARK)
        if inside and not nodes[-1].name.startswith(DCN + BODY_MARK):
            nodes.append(onnx.helper.make_node('Cast', [x], [f'{x}_fp16'], name='to_fp16', to=TensorProto.FLOAT16))
        node.input[:] = [{x: f'{x}_fp16'}.get(i, i) if inside else {y: f'{y}_fp32'}.get(i, i) for i in node.input]
        nodes.append(node)
        if inside and y in node.output:  # the network after the call stays FP32 in this test
            nodes.append(onnx.helper.make_node('Cast', [y], [f'{y}_fp32'], name='from_fp16', to=TensorProto.FLOAT))
    del split.network.graph.node[:]
    split.network.graph.node.extend(nodes)
    joined = join_postprocess(split.network, split, 'fp16')
    onnx.checker.check_model(joined, full_check=True)
    (call,) = calls(joined)
    made_by, types = producers(joined), elem_types(joined)
    assert made_by[call.input[0]].op_type == 'Cast' and made_by[call.input[0]].input[0] == f'{x}_fp16'
    assert types[call.output[0]] == TensorProto.FLOAT and types[y] == TensorProto.FLOAT16
    assert made_by[y].op_type == 'Cast' and made_by[y].input[0] == call.output[0]
    expected, actual = run(plus, calibration_pixels), run(joined, calibration_pixels)
    np.testing.assert_allclose(actual['masks'], expected['masks'], atol=0.01)
