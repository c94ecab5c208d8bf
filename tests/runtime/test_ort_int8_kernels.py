"""onnxruntime's integer kernels must compute an INT8 model's sums exactly on every x86 CPU: the
u8s8 kernels of CPUs without VNNI saturate pairs of products at 16 bits, so the runtime picks the
exact u8u8 kernels there by itself (runtime/backends/ort_backend.py). These tests run the same
checks on every machine; the CPU's kind is simulated where the choice itself is tested."""

import dataclasses
import platform

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import METADATA_KEY, metadata_from_props
from export.onnx_export import export_onnx
from yolact_torch.checkpoint import load_model
from runtime.backends import BackendError, ort_backend
from runtime.backends.ort_backend import EXACT_INT8_OPTION, create_session, int8_kernels
from runtime.infer import main as infer_main

CHANNELS = 16
KERNEL = 3
OUTPUT_LEVELS = 250  # the exact result's uint8 code


def saturating_conv(path) -> float:
    """A Q/DQ convolution onnxruntime fuses into a u8 x s8 QLinearConv, with every activation at 255
    and every weight at 127: each pair of products (64770) overflows int16. Written to `path`;
    returns the exact output value (CHANNELS * KERNEL**2, with activations and weights both 1.0)."""
    exact = float(CHANNELS * KERNEL * KERNEL)
    constants = {
        'x_scale': np.array(1 / 255, np.float32), 'x_zero': np.array(0, np.uint8),
        'w_q': np.full((8, CHANNELS, KERNEL, KERNEL), 127, np.int8), 'w_scale': np.array(1 / 127, np.float32),
        'w_zero': np.array(0, np.int8), 'y_scale': np.array(exact / OUTPUT_LEVELS, np.float32),
        'y_zero': np.array(0, np.uint8)}
    nodes = [helper.make_node('QuantizeLinear', ['x', 'x_scale', 'x_zero'], ['x_q']),
             helper.make_node('DequantizeLinear', ['x_q', 'x_scale', 'x_zero'], ['x_dq']),
             helper.make_node('DequantizeLinear', ['w_q', 'w_scale', 'w_zero'], ['w_dq']),
             helper.make_node('Conv', ['x_dq', 'w_dq'], ['y'], name='conv'),
             helper.make_node('QuantizeLinear', ['y', 'y_scale', 'y_zero'], ['y_q']),
             helper.make_node('DequantizeLinear', ['y_q', 'y_scale', 'y_zero'], ['out'])]
    graph = helper.make_graph(
        nodes, 'saturating_conv', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, CHANNELS, 5, 5])],
        [helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 8, 3, 3])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return exact


def test_the_runtime_session_sums_integer_products_exactly(tmp_path):
    """Fails on an x86 CPU without VNNI unless the exact kernels are chosen (the default kernels give
    about half: 72.6 instead of 144); passes unchanged on a VNNI CPU, whose kernels are exact."""
    exact = saturating_conv(tmp_path / 'conv.onnx')
    session = create_session(tmp_path / 'conv.onnx')
    out = session.run(None, {'x': np.ones((1, CHANNELS, 5, 5), np.float32)})[0]
    np.testing.assert_allclose(out, exact, rtol=0, atol=exact / OUTPUT_LEVELS)


@pytest.mark.parametrize('machine, vnni, exact', [
    ('x86_64', False, True),  # AVX2 / AVX-512 without VNNI: the u8s8 kernels saturate
    ('x86_64', True, False),  # VNNI: the fast kernels are exact
    ('x86_64', None, True),  # flags unreadable: exact costs only speed
    ('aarch64', None, False),  # the option is x86-only in onnxruntime
])
def test_the_exact_kernels_are_chosen_where_the_fast_ones_saturate(monkeypatch, machine, vnni, exact):
    monkeypatch.setattr(ort_backend.platform, 'machine', lambda: machine)
    monkeypatch.setattr(ort_backend, 'cpu_has_vnni', lambda: vnni)
    assert ort_backend.exact_int8_kernels_needed() is exact
    assert ort_backend.int8_kernels().startswith('u8u8' if exact else ('u8s8' if vnni else "onnxruntime's"))


def test_the_session_option_follows_the_choice(monkeypatch, tmp_path):
    saturating_conv(tmp_path / 'conv.onnx')
    monkeypatch.setattr(ort_backend, 'exact_int8_kernels_needed', lambda: True)
    options = create_session(tmp_path / 'conv.onnx').get_session_options()
    assert options.get_session_config_entry(EXACT_INT8_OPTION) == '1'
    monkeypatch.setattr(ort_backend, 'exact_int8_kernels_needed', lambda: False)
    options = create_session(tmp_path / 'conv.onnx').get_session_options()
    with pytest.raises(RuntimeError, match='does not have configuration'):  # onnxruntime's default kernels
        options.get_session_config_entry(EXACT_INT8_OPTION)


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    monkeypatch.setattr(ort_backend.platform, 'machine', lambda: 'x86_64')
    monkeypatch.setattr(ort_backend, 'CPUINFO', cpuinfo)
    for flags, expected in (('fpu avx2 fma', False), ('fpu avx2 avx512f avx512_vnni', True),
                            ('fpu avx2 avx_vnni', True)):
        cpuinfo.write_text(f'processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n')
        ort_backend.cpu_has_vnni.cache_clear()
        assert ort_backend.cpu_has_vnni() is expected, flags
    cpuinfo.unlink()
    ort_backend.cpu_has_vnni.cache_clear()
    assert ort_backend.cpu_has_vnni() is None
    ort_backend.cpu_has_vnni.cache_clear()


def test_infer_says_which_integer_kernels_an_int8_model_runs_on(tiny_checkpoint, tmp_path, capsys):
    model, cfg = load_model(tiny_checkpoint)
    fp32 = export_onnx(model, cfg, tmp_path / 'tiny.onnx')
    labelled = onnx.load(fp32)  # the kernels line depends on the metadata's precision only
    props = {p.key: p for p in labelled.metadata_props}
    metadata = metadata_from_props({k: p.value for k, p in props.items()}, 'tiny.onnx')
    props[METADATA_KEY].value = dataclasses.replace(metadata, precision='int8').to_json()
    onnx.save(labelled, tmp_path / 'tiny.int8.onnx')
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((40, 60, 3), np.uint8))

    for path, kernels in ((fp32, ''), (tmp_path / 'tiny.int8.onnx', f'; INT8 kernels: {int8_kernels()}')):
        assert infer_main([str(image), '--model', str(path), '--out', str(tmp_path / 'out')]) == 0
        assert f'{path}: onnxruntime on CPUExecutionProvider{kernels}\n' in capsys.readouterr().err


def shared_weight_convs(path) -> None:
    """Two Q/DQ 1x1 convolutions on one dequantised int8 weight, as calib wrote YOLACT's shared
    prediction head before it gave each convolution its own copy. The weights are 127: onnxruntime
    rewrites only weights whose pairs of products can overflow."""
    constants = {'scale': np.array(1 / 255, np.float32), 'zero': np.array(0, np.uint8),
                 'w_q': np.full((CHANNELS, CHANNELS, 1, 1), 127, np.int8), 'w_scale': np.array(1 / 127, np.float32),
                 'w_zero': np.array(0, np.int8)}
    nodes = [helper.make_node('DequantizeLinear', ['w_q', 'w_scale', 'w_zero'], ['w_dq'])]
    previous = 'x'
    for i in range(2):
        nodes += [helper.make_node('QuantizeLinear', [previous, 'scale', 'zero'], [f'q{i}']),
                  helper.make_node('DequantizeLinear', [f'q{i}', 'scale', 'zero'], [f'dq{i}']),
                  helper.make_node('Conv', [f'dq{i}', 'w_dq'], [f'conv{i}'])]
        previous = f'conv{i}'
    nodes += [helper.make_node('QuantizeLinear', [previous, 'scale', 'zero'], ['q_out']),
              helper.make_node('DequantizeLinear', ['q_out', 'scale', 'zero'], ['out'])]
    shape = [1, CHANNELS, 5, 5]
    graph = helper.make_graph(nodes, 'shared', [helper.make_tensor_value_info('x', TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info('out', TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)]), path)


@pytest.mark.skipif(platform.machine().lower() not in ort_backend.X86_MACHINES,
                    reason='onnxruntime has the exact-kernel option on x86 only')
def test_an_int8_model_the_exact_kernels_cannot_load_is_refused_with_the_fix(monkeypatch, tmp_path):
    shared_weight_convs(tmp_path / 'shared.onnx')
    monkeypatch.setattr(ort_backend, 'exact_int8_kernels_needed', lambda: True)
    with pytest.raises(BackendError, match=r'share quantised weights .* python -m calib --precision int8 '
                                           r'--layout onnxruntime'):
        create_session(tmp_path / 'shared.onnx')
    monkeypatch.setattr(ort_backend, 'exact_int8_kernels_needed', lambda: False)
    create_session(tmp_path / 'shared.onnx')  # the default kernels take it
