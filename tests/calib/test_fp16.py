import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats
from onnx import TensorProto

from calib.fp16 import StreamingReferenceRunner, autocast_fp16, convert_fp16
from calib.graph import model_metadata, preprocessing_nodes, split_postprocess
from tests.calib.standin import COEF_CONV, PROTO_CONV, build_standin, smooth_images


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


def range_network(scale: float) -> onnx.ModelProto:
    """images uint8 [B, H, W, 3] -> Cast -> `big` = pixels * scale (node SCALE_NODE) -> `out` =
    big / scale float32 [B, H, W, 3]."""
    from onnx import helper

    nodes = [helper.make_node('Cast', ['images'], ['pixels'], to=TensorProto.FLOAT, name='cast'),
             helper.make_node('Mul', ['pixels', 'scale'], ['big'], name=SCALE_NODE),
             helper.make_node('Div', ['big', 'scale'], ['out'], name='unscale')]
    graph = helper.make_graph(
        nodes, 'range', [helper.make_tensor_value_info('images', TensorProto.UINT8, ['b', 'h', 'w', 3])],
        [helper.make_tensor_value_info('out', TensorProto.FLOAT, ['b', 'h', 'w', 3])],
        [onnx.numpy_helper.from_array(np.array(scale, np.float32), 'scale')])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)])


SCALE_NODE = 'scale_up'


def node_output_types(model: onnx.ModelProto) -> dict[str, int]:
    """Node name -> element type of its first output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    return {n.name: types[n.output[0]] for n in model.graph.node if n.output[0] in types}


def test_a_node_out_of_fp16_range_on_one_later_image_stays_fp32():
    """Every pixel is 1 (x 300: within AutoCast's safe range, |x| <= 512, well inside FP16's 65504)
    but one of the third image's, 255 (x 300 = 76500, past FP16's range). The statistics of all
    images, not only the first, decide."""
    images = [np.full((8, 8, 3), 1, np.uint8) for _ in range(4)]
    images[2] = images[2].copy()
    images[2][5, 6, 1] = 255
    converted = autocast_fp16(range_network(300.0), images, kept=['cast'])
    assert node_output_types(converted)[SCALE_NODE] == TensorProto.FLOAT
    # Without that image the same node becomes FP16 (else this proves nothing).
    converted = autocast_fp16(range_network(300.0), images[:2] + images[3:], kept=['cast'])
    assert node_output_types(converted)[SCALE_NODE] == TensorProto.FLOAT16


def test_the_streaming_statistics_are_modelopts(standin, tmp_path):
    """StreamingReferenceRunner reduces batch by batch to exactly what modelopt's ReferenceRunner
    aggregates at the end (its _aggregate_tensor_stats), for every tensor: this fails if a modelopt
    upgrade changes the statistics, their names, or the runner's helpers this relies on."""
    network = split_postprocess(standin).network
    for index, size in enumerate((16, 16, 24)):
        np.savez(tmp_path / f'{index}.npz', images=smooth_images(2, size=size, seed=index))
    theirs = ReferenceRunner(network).run(str(tmp_path))
    ours = StreamingReferenceRunner(network).run(str(tmp_path))
    assert list(ours) == list(theirs)
    assert all(isinstance(s, TensorStats) for s in ours.values())
    for name, stats in theirs.items():
        assert (ours[name].absmax, ours[name].min_val, ours[name].max_val, ours[name].shape) == \
               (stats.absmax, stats.min_val, stats.max_val, stats.shape), name


def test_autocast_runs_the_streaming_runner(standin, calibration_pixels, monkeypatch):
    """convert_to_mixed_precision looks ReferenceRunner up by name in its module, which is where
    calib.fp16 swaps in StreamingReferenceRunner; if a modelopt upgrade stops that, modelopt's own
    run would keep every tensor of every image again. And the swap is undone afterwards."""
    from modelopt.onnx.autocast import convert as autocast_convert

    def keeps_everything(self, inputs=None):
        raise AssertionError("modelopt's ReferenceRunner.run ran")

    monkeypatch.setattr(ReferenceRunner, 'run', keeps_everything)
    runs = []
    streaming_run = StreamingReferenceRunner.run
    monkeypatch.setattr(StreamingReferenceRunner, 'run', lambda self, inputs=None: runs.append(inputs) or streaming_run(self, inputs))
    convert_fp16(standin, calibration_pixels[:3])
    assert len(runs) == 1
    assert autocast_convert.ReferenceRunner is ReferenceRunner


def test_fp16_memory_does_not_grow_with_the_image_count(tmp_path):
    """Python-side allocations (numpy's, so onnxruntime's outputs, included) of FP16 conversion at 2
    and at 16 images: the 14 more images' tensors (about 6.6 MB per image at 96x96) must not stay in
    memory together. A few KB per image remain (the log records pytest keeps), so the bound is one
    float32 [16, 96, 96] activation."""
    size = 96
    model = build_standin(size=size)
    images = list(smooth_images(16, size=size, seed=5))
    convert_fp16(model, images[:1])  # the first run imports modelopt's lazy modules: not measured
    peaks = {}
    for count in (2, 16):
        tracemalloc.start()
        convert_fp16(model, images[:count])
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[16] - peaks[2] < 16 * size * size * 4, peaks
