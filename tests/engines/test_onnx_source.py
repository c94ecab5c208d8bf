"""The builder reads the model's metadata and checks the file against the model contract before
TensorRT sees it; every bad model gets a message that names the problem and the fix."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.errors import EngineBuildError
from engines.onnx_source import graph_precision, load_onnx

from tests.engines.toy_models import TOY_FUNCTION, TOY_SIZE, toy_metadata, toy_model


@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'int8'])
def test_reads_the_toy_models(write_toy, precision):
    path = write_toy(precision)
    source = load_onnx(path)
    assert source.metadata == toy_metadata(precision)
    assert source.graph_precision == precision
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (source.input_name, source.input_batch) == ('images', None)
    assert source.function_ops == (f'yolact::{TOY_FUNCTION}',)


def test_graph_precision_prefers_int8_over_fp16():
    model = toy_model('int8')
    model.graph.node.append(helper.make_node('Cast', ['scores'], ['half'], to=TensorProto.FLOAT16))
    assert graph_precision(model) == 'int8'
    del model.graph.node[-1]
    model = toy_model('fp32')
    model.graph.node.append(helper.make_node('Cast', ['scores'], ['half'], to=TensorProto.FLOAT16))
    assert graph_precision(model) == 'fp16'


def test_truncated_file(write_toy):
    path = write_toy('fp32')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(EngineBuildError, match=r'not a readable ONNX model .*truncated or corrupted.*make export'):
        load_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(EngineBuildError, match=r'does not exist; re-create it with `make export`'):
        load_onnx(tmp_path / 'nothing.onnx')


def test_missing_metadata(tmp_path):
    model = toy_model('fp32')
    del model.metadata_props[:]
    onnx.save_model(model, tmp_path / 'bare.onnx')
    with pytest.raises(EngineBuildError, match=r"no 'yolact.metadata' metadata_props entry.*make export"):
        load_onnx(tmp_path / 'bare.onnx')


def test_metadata_precision_must_match_the_graph(write_toy):
    path = write_toy('fp32', metadata=toy_metadata('fp16'))
    with pytest.raises(EngineBuildError, match='its metadata says fp16 but its graph is fp32'):
        load_onnx(path)


def test_the_onnxruntime_int8_layout_is_refused_with_the_fix(tmp_path):
    model = toy_model('int8')
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(128, np.uint8), 'zero_u8'))
    for node in model.graph.node:
        if node.op_type in ('QuantizeLinear', 'DequantizeLinear') and node.input[0] in ('x', 'x_q'):
            node.input[2] = 'zero_u8'
    onnx.save_model(model, tmp_path / 'ort.int8.onnx')
    with pytest.raises(EngineBuildError, match=r'laid out for onnxruntime \(uint8 activations\).*without --layout onnxruntime'):
        load_onnx(tmp_path / 'ort.int8.onnx')


def test_input_must_follow_the_contract(tmp_path):
    """An export from before the resize moved into the graph takes images at the model size only."""
    model = toy_model('fp32')
    for dim in model.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.dim_value = TOY_SIZE
    onnx.save_model(model, tmp_path / 'fixed_size.onnx')
    with pytest.raises(EngineBuildError, match=rf"input 'images' is uint8 \['\?', {TOY_SIZE}, {TOY_SIZE}, 3\], "
                                               r'the model contract is uint8 \[B, H, W, 3\] with any H and W.*make export'):
        load_onnx(tmp_path / 'fixed_size.onnx')


def test_fixed_batch_is_reported(write_toy):
    assert load_onnx(write_toy('fp32', fixed_batch=2)).input_batch == 2
