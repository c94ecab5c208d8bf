import tempfile
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

import calib.quantize
from calib.convert import convert_model
from calib.graph import CalibrationError, model_metadata, preprocessing_nodes, producing_convs, split_postprocess
from calib.quantize import CALIBRATION_METHODS, quantize_int8
from runtime.backends import ort_backend
from runtime.backends.ort_backend import create_session
from tests.calib.standin import COEF_CONV, PROTO_CONV, build_standin, raw_export_like, smooth_images

QDQ = {'QuantizeLinear', 'DequantizeLinear'}


def read_cache(path) -> dict[str, float]:
    """Tensor name -> scale, as modelopt reads the cache file."""
    return {name.removesuffix('_scale'): scale for name, scale in import_scales_from_calib_cache(str(path)).items()}


def run(model: onnx.ModelProto, images: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    """Outputs of `model` in the session the runtime makes (its integer kernels are chosen per CPU)."""
    path = Path(tempfile.mkstemp(suffix='.onnx', dir=tmp_path)[1])
    onnx.save(model, path)
    session = create_session(path, providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {'images': images})))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def dequantized_convs(model: onnx.ModelProto) -> dict[str, bool]:
    """Conv name -> whether both its activation and its weight come from DequantizeLinear."""
    made_by = producers(model)
    return {n.name: all(i in made_by and made_by[i].op_type == 'DequantizeLinear' for i in n.input[:2])
            for n in model.graph.node if n.op_type == 'Conv'}


@pytest.fixture(scope='module')
def int8(standin, calibration_pixels, tmp_path_factory):
    return quantize_int8(standin, calibration_pixels, cache_dir=tmp_path_factory.mktemp('cache'), model_name='standin')


def test_int8_passes_the_checker_and_runs(standin, int8, calibration_pixels, tmp_path):
    onnx.checker.check_model(int8.model, full_check=True)
    assert model_metadata(int8.model).precision == 'int8'
    expected, actual = run(standin, calibration_pixels, tmp_path), run(int8.model, calibration_pixels, tmp_path)
    assert {k: (v.dtype, v.shape) for k, v in actual.items()} == {k: (v.dtype, v.shape) for k, v in expected.items()}


def test_int8_has_qdq_around_every_convolution(int8):
    assert all(dequantized_convs(int8.model).values()), dequantized_convs(int8.model)


def test_int8_leaves_the_postprocessing_in_fp32(standin, int8):
    assert [f.name for f in int8.model.functions] == ['FastNMS', 'MaskAssembly']
    for function in int8.model.functions:
        assert not {n.op_type for n in function.node} & QDQ, function.name
        assert [n.op_type for n in function.node] == [
            n.op_type for n in next(f for f in standin.functions if f.name == function.name).node]
    made_by = producers(int8.model)
    for node in int8.model.graph.node:
        if node.domain == 'yolact':
            assert all(made_by[i].op_type not in QDQ for i in node.input), node.name


def test_int8_network_stays_close_to_fp32(standin, int8, tmp_path):
    images = smooth_images(4, seed=7)  # not the calibration images
    expected = run(split_postprocess(standin).network, images, tmp_path)
    actual = run(split_postprocess(int8.model).network, images, tmp_path)
    for name in ('boxes', 'scores', 'proto', 'coef'):
        # Entropy calibration clips outliers on purpose: compare the typical error, not the worst.
        assert np.abs(actual[name] - expected[name]).mean() < 0.03 * np.abs(expected[name]).max(), name


def test_keep_sensitive_leaves_the_mask_convolutions_unquantised(standin, calibration_pixels, int8):
    kept = quantize_int8(standin, calibration_pixels, keep_sensitive=True, cache_dir=int8.cache.parent,
                         model_name='standin')
    assert sorted(kept.kept_fp32) == sorted([PROTO_CONV, COEF_CONV])
    quantized = dequantized_convs(kept.model)
    assert not quantized[PROTO_CONV] and not quantized[COEF_CONV]
    assert all(v for k, v in quantized.items() if k not in kept.kept_fp32)
    onnx.checker.check_model(kept.model, full_check=True)


def test_the_calibration_cache_is_reused(standin, calibration_pixels, int8, monkeypatch):
    assert not int8.cache_hit and int8.cache.is_file()

    def no_calibration(*args, **kwargs):
        raise AssertionError('calibrated again although the cache holds the ranges')

    monkeypatch.setattr(calib.quantize, 'calibrate_amax', no_calibration)
    again = quantize_int8(standin, calibration_pixels, cache_dir=int8.cache.parent, model_name='standin')
    assert again.cache_hit and again.cache == int8.cache
    assert again.model.SerializeToString() == int8.model.SerializeToString()


def test_the_scales_come_from_the_cache(int8):
    scales = read_cache(int8.cache)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in int8.model.graph.initializer}
    activation_qs = [n for n in int8.model.graph.node
                     if n.op_type == 'QuantizeLinear' and n.input[0] not in initializers]
    assert activation_qs
    for node in activation_qs:
        assert float(initializers[node.input[1]]) == pytest.approx(scales[node.input[0]], rel=1e-6)


@pytest.mark.battery
@pytest.mark.parametrize('corruption', ('header only', 'a nan range', 'not hex', 'a missing tensor'))
def test_a_corrupted_cache_is_rebuilt_with_one_warning(standin, calibration_pixels, int8, tmp_path, caplog, corruption):
    good = int8.cache.read_text().splitlines()
    lines = {'header only': good[:1],
             'a nan range': [*good[:-1], good[-1].split(':')[0] + ': 7fc00000'],
             'not hex': [*good[:-1], good[-1].split(':')[0] + ': zz'],
             'a missing tensor': [line for line in good if not line.startswith('relu1:')]}[corruption]
    cache = tmp_path / int8.cache.name
    cache.write_text('\n'.join(lines) + '\n')
    with caplog.at_level('WARNING', logger='calib'):
        again = quantize_int8(standin, calibration_pixels, cache_dir=tmp_path, model_name='standin')
    warnings = [r.getMessage() for r in caplog.records if r.name == 'calib.quantize']
    assert len(warnings) == 1 and warnings[0].startswith(f'calibration cache {cache} is unusable (')
    assert not again.cache_hit and again.cache == cache
    assert cache.read_text() == int8.cache.read_text()
    assert again.model.SerializeToString() == int8.model.SerializeToString()


@pytest.mark.battery
def test_an_int8_model_without_qdq_is_refused(standin, calibration_pixels, int8, tmp_path, monkeypatch):
    (tmp_path / int8.cache.name).write_text(int8.cache.read_text().splitlines()[0] + '\n')
    monkeypatch.setattr(calib.quantize, 'cache_problem', lambda path, needed: None)  # a check that missed it
    with pytest.raises(CalibrationError, match='put no Q/DQ node in the network'):
        quantize_int8(standin, calibration_pixels, cache_dir=tmp_path, model_name='standin')


def test_other_images_calibrate_afresh(standin, int8):
    other = quantize_int8(standin, smooth_images(8, seed=3), cache_dir=int8.cache.parent, model_name='standin')
    assert not other.cache_hit and other.cache != int8.cache


@pytest.mark.parametrize('method', sorted(set(CALIBRATION_METHODS) - {'entropy'}))
def test_other_methods_give_other_ranges(standin, calibration_pixels, int8, method):
    other = quantize_int8(standin, calibration_pixels, method=method, cache_dir=int8.cache.parent,
                          model_name='standin')
    assert other.cache != int8.cache
    assert read_cache(other.cache).keys() == read_cache(int8.cache).keys()
    assert read_cache(other.cache) != read_cache(int8.cache)
    assert all(dequantized_convs(other.model).values())


def test_an_unknown_method_is_refused(standin, calibration_pixels, tmp_path):
    with pytest.raises(CalibrationError, match='entropy, max, percentile'):
        quantize_int8(standin, calibration_pixels, method='mse', cache_dir=tmp_path, model_name='standin')


def test_int8_of_a_model_without_postprocessing(standin, calibration_pixels, tmp_path):
    raw = raw_export_like(standin)
    int8 = quantize_int8(raw, calibration_pixels, cache_dir=tmp_path, model_name='raw')
    onnx.checker.check_model(int8.model, full_check=True)
    assert all(dequantized_convs(int8.model).values())
    expected, actual = run(raw, calibration_pixels, tmp_path), run(int8.model, calibration_pixels, tmp_path)
    assert list(actual) == list(expected)
    np.testing.assert_array_equal(actual['priors'], expected['priors'])


@pytest.fixture(scope='module')
def int8_ort(standin, calibration_pixels, int8):
    return quantize_int8(standin, calibration_pixels, cache_dir=int8.cache.parent, model_name='standin',
                         layout='onnxruntime')


def output_convs(model: onnx.ModelProto) -> set[str]:
    """The convolutions producing the network's outputs (the onnxruntime layout keeps them FP32)."""
    network = split_postprocess(model).network
    return set(producing_convs(network, [o.name for o in network.graph.output]))


def consumed_by(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def test_the_onnxruntime_layout_takes_the_cached_ranges_and_quantises_conv_outputs_to_uint8(standin, int8, int8_ort):
    assert int8_ort.cache_hit and int8_ort.cache == int8.cache
    onnx.checker.check_model(int8_ort.model, full_check=True)
    assert model_metadata(int8_ort.model).precision == 'int8'
    last = output_convs(standin)
    assert set(int8_ort.kept_fp32) == last
    assert last and all(quantized == (name not in last) for name, quantized in dequantized_convs(int8_ort.model).items())
    users = consumed_by(int8_ort.model)
    for conv in (n for n in int8_ort.model.graph.node if n.op_type == 'Conv'):
        output_quantized = [u.op_type for u in users[conv.output[0]]] == ['QuantizeLinear']
        assert output_quantized == (conv.name not in last), conv.name
    zero_points = {t.name: t.data_type for t in int8_ort.model.graph.initializer}
    activation_qs = [n for n in int8_ort.model.graph.node if n.op_type == 'QuantizeLinear' and n.input[0] not in zero_points]
    assert activation_qs and all(zero_points[n.input[2]] == onnx.TensorProto.UINT8 for n in activation_qs)
    for function in int8_ort.model.functions:
        assert not {n.op_type for n in function.node} & QDQ, function.name


def test_the_onnxruntime_layout_folds_relus_into_the_conv_ranges_after_modelopt_ran(standin, int8, int8_ort):
    """int8_ort is placed after modelopt's run for `int8`, which edits onnxruntime's QDQ registry
    process-wide: a Relu after a quantised convolution must still fold into its uint8 range."""
    made_by = producers(int8_ort.model)
    relus = [n for n in int8_ort.model.graph.node if n.op_type == 'Relu']
    assert sum(n.op_type == 'Relu' for n in standin.graph.node) > len(relus)
    assert all(made_by[n.input[0]].name in int8_ort.kept_fp32 for n in relus)
    assert 'Relu' not in calib.quantize.QDQRegistry  # modelopt's edits are back for its next run


def test_onnxruntime_runs_every_convolution_of_its_layout_in_integers(standin, int8, int8_ort, tmp_path):
    def fused(model, name):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f'{name}.onnx')
        ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
        return [n.op_type for n in onnx.load(tmp_path / f'{name}.onnx').graph.node]

    convs = sum(n.op_type == 'Conv' for n in standin.graph.node)
    assert fused(int8_ort.model, 'ort').count('QLinearConv') == convs - len(output_convs(standin)) > 0
    assert fused(int8.model, 'tensorrt').count('QLinearConv') == 0  # why the layouts differ


def test_the_onnxruntime_layout_stays_close_to_fp32(standin, int8_ort, tmp_path):
    images = smooth_images(4, seed=7)
    expected = run(split_postprocess(standin).network, images, tmp_path)
    actual = run(split_postprocess(int8_ort.model).network, images, tmp_path)
    for name in ('boxes', 'scores', 'proto', 'coef'):
        # Exact integer sums (VNNI's kernels, or the u8u8 ones the runtime picks elsewhere) are the
        # quantised model's own value: 0.008 at most (coef) on an AVX2 EPYC. The u8s8 kernels'
        # saturation on that CPU, which the runtime avoids, gave 0.035.
        assert np.abs(actual[name] - expected[name]).mean() < 0.015 * np.abs(expected[name]).max(), name


def test_an_unknown_layout_is_refused(standin, calibration_pixels, tmp_path):
    with pytest.raises(CalibrationError, match='tensorrt, onnxruntime'):
        quantize_int8(standin, calibration_pixels, cache_dir=tmp_path, model_name='standin', layout='openvino')



def test_the_onnxruntime_layout_gives_each_convolution_its_own_weight(standin, int8_ort, tmp_path, monkeypatch):
    """The stand-in's conv1 and conv2 share weights (as YOLACT's head shares them across FPN levels);
    onnxruntime's exact u8u8 kernels, which the runtime picks on x86 without VNNI, refuse a session
    whose fused convolutions share one int8 weight. Forced here, so every CPU checks it."""
    users = consumed_by(int8_ort.model)
    weights = [n for n in int8_ort.model.graph.node if n.op_type == 'DequantizeLinear'
               and n.input[0] in {t.name for t in int8_ort.model.graph.initializer}]
    assert weights and all(len(users[n.output[0]]) == 1 for n in weights)
    monkeypatch.setattr(ort_backend, 'exact_int8_kernels_needed', lambda: True)
    images = smooth_images(2, seed=7)
    fp32 = run(split_postprocess(standin).network, images, tmp_path)
    exact = run(split_postprocess(int8_ort.model).network, images, tmp_path)
    assert np.abs(exact['coef'] - fp32['coef']).mean() < 0.015 * np.abs(fp32['coef']).max()


def test_the_preprocessing_gets_no_qdq(standin, int8):
    """Cast, resize and normalisation stay FP32: no input of theirs is dequantised."""
    made_by = producers(int8.model)
    nodes = {n.name: n for n in int8.model.graph.node}
    for name in preprocessing_nodes(split_postprocess(standin).network):
        assert not [i for i in nodes[name].input if i in made_by and made_by[i].op_type in QDQ], name


def test_images_of_several_sizes_calibrate_and_key_the_cache(standin, tmp_path):
    """Images go in at their own size; the same pixels at another size are another calibration."""
    images = [*smooth_images(2, size=24, seed=3), smooth_images(1, size=40, seed=4)[0, :, :30]]
    first = quantize_int8(standin, images, cache_dir=tmp_path, model_name='standin')
    reshaped = [images[0].reshape(12, 48, 3), *images[1:]]
    second = quantize_int8(standin, reshaped, cache_dir=tmp_path, model_name='standin')
    assert not first.cache_hit and not second.cache_hit and first.cache != second.cache


@pytest.mark.battery
def test_calibration_memory_does_not_grow_with_the_image_count(tmp_path):
    """Python-side allocations (numpy's included) of a whole INT8 conversion at 8 and at 40 images:
    the 32 more images (27 KB each at 96x96) must not stay in memory together."""
    size = 96
    model_path = tmp_path / 'standin96.onnx'
    onnx.save(build_standin(size=size), model_path)
    folder = tmp_path / 'images'
    folder.mkdir()
    for i, image in enumerate(smooth_images(40, size=size, seed=5)):
        cv2.imwrite(str(folder / f'{i:03d}.png'), image)
    peaks = {}
    for count in (4, 8, 40):  # the first run imports and patches modelopt's modules: not measured
        tracemalloc.start()
        convert_model(model_path, 'int8', folder, count=count, output=tmp_path / f'{count}.int8.onnx',
                      cache_dir=tmp_path / f'cache{count}')
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    image_bytes = size * size * 3
    assert peaks[40] - peaks[8] < 8 * image_bytes, peaks
