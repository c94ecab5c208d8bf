"""Tiny stand-ins for the exported models: the real ones take minutes to build, these seconds.

Each follows the model contract where the builder looks: one uint8 [B, H, W, 3] input with a
symbolic batch, height and width, a Cast, a Resize to 16 x 16, two Convs, a model-local function in domain "yolact" (standing in for
FastNMS / MaskAssembly: TensorRT must build its body as standard layers), and the
`yolact.metadata` entry. fp16: float16 weights and compute; int8: Q/DQ around the first Conv.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from yolact_torch.config import get_config, metadata_from_config
from runtime.contract import METADATA_KEY
from runtime.metadata import ModelMetadata

TOY_SIZE = 16
TOY_OPSET = 19  # the exporter's
TOY_FUNCTION = 'ToyGate'


def toy_metadata(precision: str) -> ModelMetadata:
    meta = metadata_from_config(get_config('yolact_tiny'), precision=precision)
    return dataclasses.replace(meta, input_size=(TOY_SIZE, TOY_SIZE))


def toy_function() -> onnx.FunctionProto:
    """Y = Relu(X) * alpha, alpha an attribute reference (as the plugins' thresholds are)."""
    alpha = onnx.AttributeProto(name='value_float', ref_attr_name='alpha', type=onnx.AttributeProto.FLOAT)
    constant = helper.make_node('Constant', [], ['alpha_value'])
    constant.attribute.append(alpha)
    return helper.make_function(
        'yolact', TOY_FUNCTION, ['X'], ['Y'],
        [helper.make_node('Relu', ['X'], ['R']), constant,
         helper.make_node('CastLike', ['alpha_value', 'R'], ['A']), helper.make_node('Mul', ['R', 'A'], ['Y'])],
        [helper.make_opsetid('', TOY_OPSET)], attributes=['alpha'])


def toy_model(precision: str = 'fp32', *, metadata: ModelMetadata | None = None, with_function_body: bool = True,
              fixed_batch: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    float_np = np.float16 if precision == 'fp16' else np.float32
    float_onnx = TensorProto.FLOAT16 if precision == 'fp16' else TensorProto.FLOAT
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    initializers = [numpy_helper.from_array(w2.astype(float_np), 'w2')]
    initializers.append(numpy_helper.from_array(np.array([TOY_SIZE, TOY_SIZE], np.int64), 'toy_size'))
    nodes = [helper.make_node('Cast', ['images'], ['pixels'], to=float_onnx),
             helper.make_node('Transpose', ['pixels'], ['planes'], perm=[0, 3, 1, 2]),
             helper.make_node('Shape', ['planes'], ['batch_channels'], end=2),
             helper.make_node('Concat', ['batch_channels', 'toy_size'], ['sizes'], axis=0),
             helper.make_node('Resize', ['planes', '', '', 'sizes'], ['x'], mode='linear')]
    if precision == 'int8':
        w_scale = np.float32(np.abs(w1).max() / 127)
        initializers += [
            numpy_helper.from_array(np.array(255 / 127, np.float32), 'x_scale'),
            numpy_helper.from_array(np.array(w_scale, np.float32), 'w_scale'),
            numpy_helper.from_array(np.array(0, np.int8), 'zero'),
            numpy_helper.from_array(np.clip(np.round(w1 / w_scale), -127, 127).astype(np.int8), 'w1_q')]
        nodes += [helper.make_node('QuantizeLinear', ['x', 'x_scale', 'zero'], ['x_q']),
                  helper.make_node('DequantizeLinear', ['x_q', 'x_scale', 'zero'], ['x_dq']),
                  helper.make_node('DequantizeLinear', ['w1_q', 'w_scale', 'zero'], ['w1']),
                  helper.make_node('Conv', ['x_dq', 'w1'], ['c1'], pads=[1, 1, 1, 1])]
    else:
        initializers.append(numpy_helper.from_array(w1.astype(float_np), 'w1'))
        nodes.append(helper.make_node('Conv', ['x', 'w1'], ['c1'], pads=[1, 1, 1, 1]))
    nodes += [helper.make_node(TOY_FUNCTION, ['c1'], ['gated'], domain='yolact', alpha=0.5),
              helper.make_node('Conv', ['gated', 'w2'], ['c2']),
              helper.make_node('Cast', ['c2'], ['scores'], to=TensorProto.FLOAT)]
    batch = 'batch' if fixed_batch is None else fixed_batch
    graph = helper.make_graph(
        nodes, 'toy_yolact', [helper.make_tensor_value_info('images', TensorProto.UINT8, [batch, 'height', 'width', 3])],
        [helper.make_tensor_value_info('scores', TensorProto.FLOAT, [batch, 2, TOY_SIZE, TOY_SIZE])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', TOY_OPSET), helper.make_opsetid('yolact', 1)],
                              functions=[toy_function()] if with_function_body else [], ir_version=10)
    meta = metadata if metadata is not None else toy_metadata(precision)
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    return model
