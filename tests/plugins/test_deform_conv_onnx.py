"""The `yolact::DeformConv2d` function body, run by onnxruntime, equals the float64 reference within
float32 rounding: odd sizes, H or W of 1, stride 2, dilation, two deformable groups, every
supported opset, float16 inputs, one session for every shape."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from plugins import DEFORM_CONV_OP, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.deform_conv import onnx_function
from plugins.deform_conv.reference import deform_conv2d
from plugins.onnx_model import DOMAIN_VERSION, IR_VERSION
from tests.plugins.deform_conv_cases import CASES, assert_close, case, deform_conv_case
from tests.plugins.test_onnx_functions import session

# float32 against the float64 reference, outputs up to ~4: the worst case of CASES needed atol 8.5e-7
# (rtol alone 6.4e-5, near zero outputs) from the float32 sums and the coordinates' round trip
# through GridSample's normalised grid; the assertion message reports what a failing case needed.
ATOL_FP32 = 5e-6
ATOL_FP16 = 2e-3  # against the reference on the float16-rounded inputs: needed 4.8e-4 (output rounding)


def deform_conv_model(dtype=TensorProto.FLOAT, opset: int = 19, **attributes) -> onnx.ModelProto:
    """One DeformConv2d node with every dimension dynamic, its function and the `yolact` opset."""
    node = onnx_function.make_node(onnx_function.INPUTS, onnx_function.OUTPUTS, **attributes)
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], 'deform_conv',
        [value('x', dtype, ['B', 'C', 'H', 'W']), value('offset', dtype, ['B', 'O', 'Ho', 'Wo']),
         value('mask', dtype, ['B', 'M', 'Ho', 'Wo']), value('weight', dtype, ['Cout', 'C', 'kh', 'kw']),
         value('bias', dtype, ['Cout'])],
        [value('y', dtype, ['B', 'Cout', 'Ho', 'Wo'])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = IR_VERSION
    model.functions.append(onnx_function.make_function(opset))
    return model


@functools.lru_cache(maxsize=32)
def deform_conv_session(stride, padding, dilation, deformable_groups, dtype=TensorProto.FLOAT, opset=19):
    return session(deform_conv_model(dtype, opset, stride=stride, padding=padding, dilation=dilation,
                                     deformable_groups=deformable_groups))


def run(c, dtype=np.float32, opset=19):
    float_type = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    (y,) = deform_conv_session(*c.attributes().values(), float_type, opset).run(
        None, dict(zip(onnx_function.INPUTS, (a.astype(dtype) for a in c.inputs()))))
    return y


@pytest.mark.parametrize('name', CASES)
@pytest.mark.parametrize('seed', [0, 1])
def test_function_equals_reference(name, seed):
    c = case(name, seed)
    got = run(c)
    expected = deform_conv2d(*(a.astype(np.float64) for a in c.inputs()), **c.attributes())
    assert got.dtype == np.float32
    assert_close(got, expected, atol=ATOL_FP32, what=name)


def test_function_float16_inputs():
    c = case('yolact-3x3-s2', 3)
    got = run(c, np.float16)
    expected = deform_conv2d(*(a.astype(np.float16).astype(np.float64) for a in c.inputs()), **c.attributes())
    assert got.dtype == np.float16
    assert_close(got, expected, atol=ATOL_FP16, what='float16')


@pytest.mark.parametrize('opset', [18, 19, 20, 21, 22])
def test_every_supported_opset_checks_and_runs(opset):
    c = case('deformable-groups-2', opset)
    assert_close(run(c, opset=opset), deform_conv2d(*c.inputs(), **c.attributes()), atol=ATOL_FP32, what=str(opset))


def test_one_session_serves_every_batch_size_and_channel_count():
    """Batch, channels, image size and kernel size all change under one session (same attributes)."""
    rng = np.random.default_rng(5)
    one = deform_conv_session((1, 1), (1, 1), (1, 1), 1)
    for batch, channels, out_channels, size, kernel in ((1, 4, 5, (7, 6), (3, 3)), (3, 2, 7, (4, 9), (3, 3)),
                                                        (2, 3, 1, (1, 3), (1, 2)), (1, 8, 3, (5, 5), (5, 5))):
        c = deform_conv_case(rng, batch=batch, channels=channels, out_channels=out_channels, size=size,
                             kernel=kernel, padding=(1, 1))
        (y,) = one.run(None, dict(zip(onnx_function.INPUTS, c.inputs())))
        assert_close(y, deform_conv2d(*c.inputs(), **c.attributes()), atol=ATOL_FP32,
                     what=f'{batch}x{channels}x{size} kernel {kernel}')


def test_node_carries_the_plugin_attributes():
    node = onnx_function.make_node(list('xomwb'), ['y'], stride=(2, 1), padding=1, dilation=(1, 3),
                                   deformable_groups=2)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == DOMAIN and node.op_type == DEFORM_CONV_OP == 'DeformConv2d'
    assert attrs == {'stride_h': 2, 'stride_w': 1, 'pad_h': 1, 'pad_w': 1, 'dilation_h': 1, 'dilation_w': 3,
                     'deformable_groups': 2, 'plugin_namespace': PLUGIN_NAMESPACE.encode(),
                     'plugin_version': PLUGIN_VERSION.encode()}
    assert set(attrs) == set(onnx_function.ATTRIBUTES)
    with pytest.raises(ValueError, match='padding >= 0'):
        onnx_function.make_node(list('xomwb'), ['y'], padding=-1)
    with pytest.raises(ValueError, match='inputs'):
        onnx_function.make_node(list('xomw'), ['y'])


def test_function_value_names_are_its_own():
    """TensorRT's parser inlines bodies into one graph and names nodes after their outputs."""
    names = [name for node in onnx_function.make_function().node for name in node.output]
    assert len(names) == len(set(names))
    assert all(name.startswith(f'{DEFORM_CONV_OP}_') or name == 'y' for name in names)
