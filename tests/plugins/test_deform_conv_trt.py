"""`yolact::DeformConv2d` in TensorRT: without the plugin the parser inlines the function body into
standard layers (GridSample among them; checked with TensorRT-RTX on any machine), with it the node
is one plugin layer whose output equals the reference (GPU tests: TensorRT >= 10.8 and an NVIDIA
GPU; elsewhere they skip with the reason)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from plugins import DEFORM_CONV_OP, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, register_tensorrt_plugins
from plugins.deform_conv import onnx_function
from plugins.deform_conv.reference import deform_conv2d
from plugins.onnx_model import DOMAIN_VERSION, IR_VERSION
from tests.plugins.deform_conv_cases import assert_close, deform_conv_case
from tests.plugins.test_deform_conv_onnx import ATOL_FP16, ATOL_FP32

# A YOLACT++-like layer, small: 3x3, stride 2, padding 1; the weight and bias are initializers and
# every dimension but the batch is fixed, as the plugin needs.
LAYER = dict(channels=16, out_channels=24, size=(13, 11), kernel=(3, 3), stride=(2, 2), padding=(1, 1))


def layer_case(batch: int, seed: int):
    return deform_conv_case(np.random.default_rng(seed), batch=batch, **LAYER)


def static_model(float_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    c = layer_case(1, 0)
    dtype = np.float16 if float_type == TensorProto.FLOAT16 else np.float32
    node = onnx_function.make_node(onnx_function.INPUTS, ['y'], **c.attributes())
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], 'deform_conv', [value(name, float_type, ['B', *a.shape[1:]])
                                for name, a in (('x', c.x), ('offset', c.offset), ('mask', c.mask))],
        [value('y', float_type, ['B', c.weight.shape[0], *c.offset.shape[2:]])],
        initializer=[numpy_helper.from_array(c.weight.astype(dtype), 'weight'),
                     numpy_helper.from_array(c.bias.astype(dtype), 'bias')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = IR_VERSION
    model.functions.append(onnx_function.make_function(19))
    return model


def test_tensorrt_rtx_inlines_the_function_body():
    """Without the plugin (TensorRT-RTX has no tensorrt.plugin), the node becomes standard layers."""
    trt = pytest.importorskip('tensorrt_rtx', reason='TensorRT-RTX is not installed (pip install -e .[tensorrt-rtx])')
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse(static_model().SerializeToString())
    assert parsed, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layers = {network.get_layer(i).type for i in range(network.num_layers)}
    assert trt.LayerType.GRID_SAMPLE in layers and trt.LayerType.MATRIX_MULTIPLY in layers
    assert trt.LayerType.PLUGIN_V3 not in layers
    assert [tuple(network.get_output(0).shape)] == [(-1, 24, 7, 6)]


@pytest.mark.gpu
def test_plugin_is_in_the_registry():
    import tensorrt as trt

    assert register_tensorrt_plugins() == (True, '')
    assert trt.get_plugin_registry().get_creator(DEFORM_CONV_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None


@pytest.mark.gpu
@pytest.mark.parametrize('fp16', [False, True], ids=['fp32', 'fp16'])
def test_engine_with_the_plugin_equals_reference(fp16):
    import torch

    from plugins.bench import EngineRunner, build_engine

    assert register_tensorrt_plugins() == (True, '')
    model = static_model(TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT)
    sample = layer_case(1, 0)
    shapes = {name: ((1, *a.shape[1:]), (2, *a.shape[1:]), (3, *a.shape[1:]))
              for name, a in (('x', sample.x), ('offset', sample.offset), ('mask', sample.mask))}
    engine, plugin_layers = build_engine(model.SerializeToString(), shapes, fp16=fp16)
    assert plugin_layers == 1  # the plugin, not the function body
    runner = EngineRunner(engine)
    dtype = torch.float16 if fp16 else torch.float32
    for batch, seed in ((1, 1), (3, 2)):
        c = layer_case(batch, seed)
        feeds = {name: torch.from_numpy(a).cuda().to(dtype) for name, a in (('x', c.x), ('offset', c.offset),
                                                                              ('mask', c.mask))}
        got = runner(dict(feeds))['y']
        torch.cuda.synchronize()
        seen = [t.double().cpu().numpy() for t in feeds.values()]  # what the engine saw
        weight, bias = (a.astype(np.float16 if fp16 else np.float32).astype(np.float64) for a in (c.weight, c.bias))
        expected = deform_conv2d(*seen, weight, bias, **c.attributes())
        assert got.dtype == dtype
        assert_close(got.float().cpu().numpy(), expected, atol=ATOL_FP16 if fp16 else ATOL_FP32, what=str(dtype))
