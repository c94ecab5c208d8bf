"""The ONNX function bodies, run by onnxruntime, equal the numpy references (FastNMS index for
index, MaskAssembly within 1e-5), with dynamic batch, at FP32 and FP16, for every supported opset."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from onnx import TensorProto, helper

from plugins import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.fast_nms import onnx_function as nms_function
from plugins.fast_nms.reference import fast_nms
from plugins.mask_assembly import onnx_function as mask_function
from plugins.mask_assembly.reference import assemble_masks
from plugins.onnx_builder import FunctionOpsetError
from plugins.onnx_model import IR_VERSION, add_functions, nms_and_masks_model
from tests.plugins.cases import (NMSCase, mask_case, mask_cases, negative_zero_case, nms_cases, random_boxes,
                                 random_scores)

CI_SETTINGS = settings(max_examples=40, derandomize=True, deadline=None)
NP_TO_ONNX = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])


def single_op_model(node: onnx.NodeProto, inputs: list, outputs: list, opset: int = 19) -> onnx.ModelProto:
    """A model of one yolact node, built the way the exporter does: make_node + add_functions."""
    graph = helper.make_graph([node], 'single_op', [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])
    model.ir_version = IR_VERSION
    return add_functions(model)


@functools.lru_cache(maxsize=64)
def nms_session(dtype: type = np.float32, opset: int = 19, **attributes) -> ort.InferenceSession:
    float_type = NP_TO_ONNX[dtype]
    node = nms_function.make_node(['boxes', 'scores'], nms_function.OUTPUTS, **attributes)
    d = attributes['max_dets']
    return session(single_op_model(
        node, [('boxes', float_type, ['B', 'P', 4]), ('scores', float_type, ['B', 'P', 'K'])],
        [('num_dets', TensorProto.INT32, ['B']), ('det_boxes', float_type, ['B', d, 4]),
         ('det_scores', float_type, ['B', d]), ('det_classes', TensorProto.INT32, ['B', d]),
         ('det_indices', TensorProto.INT32, ['B', d])], opset))


@functools.lru_cache(maxsize=8)
def mask_session(crop_padding: int, dtype: type = np.float32) -> ort.InferenceSession:
    float_type = NP_TO_ONNX[dtype]
    node = mask_function.make_node(mask_function.INPUTS, ['masks'], crop_padding=crop_padding)
    return session(single_op_model(
        node, [('proto', float_type, ['B', 'H', 'W', 'M']), ('coef', float_type, ['B', 'P', 'M']),
               ('det_indices', TensorProto.INT32, ['B', 'D']), ('det_boxes', float_type, ['B', 'D', 4]),
               ('num_dets', TensorProto.INT32, ['B'])],
        [('masks', float_type, ['B', 'D', 'H', 'W'])]))


def run_nms(case, dtype=np.float32, opset=19):
    outputs = nms_session(dtype, opset, **case.attributes()).run(
        None, {'boxes': case.boxes.astype(dtype), 'scores': case.scores.astype(dtype)})
    return dict(zip(nms_function.OUTPUTS, outputs))


def assert_nms_equal(got: dict, case, dtype=np.float32):
    """Every output equal to the reference run on the same (possibly float16-rounded) inputs."""
    ref = fast_nms(case.boxes.astype(dtype), case.scores.astype(dtype), **case.attributes())
    np.testing.assert_array_equal(got['num_dets'], ref.num_dets)
    np.testing.assert_array_equal(got['det_indices'], ref.indices)
    np.testing.assert_array_equal(got['det_classes'], ref.classes)
    np.testing.assert_array_equal(got['det_scores'], ref.scores.astype(dtype))
    np.testing.assert_array_equal(got['det_boxes'], ref.boxes.astype(dtype))
    for name in nms_function.OUTPUTS:
        assert got[name].dtype == (dtype if name in ('det_boxes', 'det_scores') else np.int32), name


@CI_SETTINGS
@given(case=nms_cases())
def test_fast_nms_function_equals_reference(case):
    assert_nms_equal(run_nms(case), case)


@settings(max_examples=10, derandomize=True, deadline=None)
@given(case=nms_cases())
def test_fast_nms_function_float16_inputs(case):
    assert_nms_equal(run_nms(case, np.float16), case, np.float16)


def test_fast_nms_function_more_than_top_k_per_class():
    """The original's sizes: 200 of 300 candidates per class, many classes, up to 100 detections."""
    rng = np.random.default_rng(7)
    case = NMSCase(random_boxes(rng, (2, 300)), random_scores(rng, 2, 300, 6, 0.05, 16), 0.05, 0.5, 200, 100, False)
    case.scores[1, :, :] = np.maximum(case.scores[1], 0.06)  # image 1: every prior a candidate
    got = run_nms(case)
    assert got['num_dets'][1] == 100
    assert_nms_equal(got, case)


def test_fast_nms_function_negative_zero_ties_zero():
    case = negative_zero_case()
    assert_nms_equal(run_nms(case), case)
    assert fast_nms(case.boxes, case.scores, **case.attributes()).indices[0, 2:4].tolist() == [0, 1]


def test_fast_nms_function_dynamic_batch_and_priors():
    """One session serves every batch size and prior count."""
    rng = np.random.default_rng(3)
    for batch, priors in ((1, 10), (4, 33), (2, 1)):
        case = NMSCase(random_boxes(rng, (batch, priors)), random_scores(rng, batch, priors, 3, 0.05, 8),
                       0.05, 0.5, 8, 12, False)
        assert_nms_equal(run_nms(case), case)


@CI_SETTINGS
@given(case=mask_cases())
def test_mask_assembly_function_equals_reference(case):
    (masks,) = mask_session(case.crop_padding).run(None, dict(zip(mask_function.INPUTS, case.inputs())))
    expected = assemble_masks(*case.inputs(), crop_padding=case.crop_padding)
    assert masks.dtype == np.float32 and masks.shape == expected.shape
    np.testing.assert_allclose(masks, expected, rtol=0, atol=1e-5)


def test_mask_assembly_function_float16_inputs():
    case = mask_case(np.random.default_rng(11), 2, 20, (9, 13), 8, 6, 1)
    feeds = dict(zip(mask_function.INPUTS, case.inputs()))
    for name in ('proto', 'coef', 'det_boxes'):
        feeds[name] = feeds[name].astype(np.float16)
    (masks,) = mask_session(case.crop_padding, np.float16).run(None, feeds)
    expected = assemble_masks(*(feeds[n] for n in mask_function.INPUTS), crop_padding=case.crop_padding)
    assert masks.dtype == np.float16
    np.testing.assert_allclose(masks.astype(np.float32), expected, rtol=0, atol=1e-3)  # float16 rounding


@pytest.mark.parametrize('opset', [18, 19, 20, 21, 22])
def test_every_supported_opset_checks_and_runs(opset):
    rng = np.random.default_rng(opset)
    case = NMSCase(random_boxes(rng, (2, 20)), random_scores(rng, 2, 20, 3, 0.05, 8), 0.05, 0.5, 6, 9, True)
    assert_nms_equal(run_nms(case, opset=opset), case)


def test_unsupported_opset_is_refused_with_the_fix():
    with pytest.raises(FunctionOpsetError, match='opsets 18..22'):
        nms_function.make_function(17)


def test_nodes_carry_the_plugin_attributes():
    node = nms_function.make_node(['b', 's'], list('abcde'), conf_thresh=0.05, iou_thresh=0.5, top_k=200,
                                  max_dets=100, cross_class=True)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == DOMAIN and node.op_type == 'FastNMS'
    assert attrs == {'conf_thresh': pytest.approx(0.05), 'iou_thresh': 0.5, 'top_k': 200, 'max_dets': 100,
                     'cross_class': 1, 'plugin_namespace': PLUGIN_NAMESPACE.encode(),
                     'plugin_version': PLUGIN_VERSION.encode()}
    node = mask_function.make_node(list('abcde'), ['m'], crop_padding=1)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == 'MaskAssembly' and attrs['crop_padding'] == 1
    assert set(attrs) == set(mask_function.ATTRIBUTES)
    with pytest.raises(ValueError, match='top_k >= 1'):
        nms_function.make_node(['b', 's'], list('abcde'), conf_thresh=0.05, iou_thresh=0.5, top_k=0,
                               max_dets=100, cross_class=False)
    with pytest.raises(ValueError, match='crop_padding >= 0'):
        mask_function.make_node(list('abcde'), ['m'], crop_padding=-1)


def test_add_functions_is_idempotent_and_needs_an_opset():
    model = nms_and_masks_model(conf_thresh=0.05, iou_thresh=0.5, top_k=5, max_dets=4, cross_class=False,
                              crop_padding=1)
    add_functions(model)
    assert sorted(f.name for f in model.functions) == ['FastNMS', 'MaskAssembly']
    assert [o.version for o in model.opset_import if o.domain == DOMAIN] == [1]
    bare = helper.make_model(helper.make_graph([], 'empty', [], []), opset_imports=[helper.make_opsetid(DOMAIN, 1)])
    with pytest.raises(ValueError, match='opset'):
        add_functions(bare)


def test_nms_and_masks_model_chains_both_ops():
    """The contract's outputs from decoded boxes, scores, coefficients and prototypes."""
    rng = np.random.default_rng(5)
    boxes, scores = random_boxes(rng, (3, 40)), random_scores(rng, 3, 40, 4, 0.05, 0)
    coef = np.tanh(rng.normal(size=(3, 40, 6))).astype(np.float32)
    proto = np.maximum(rng.normal(size=(3, 11, 12, 6)), 0).astype(np.float32)
    attributes = dict(conf_thresh=0.05, iou_thresh=0.5, top_k=10, max_dets=15, cross_class=False)
    model = nms_and_masks_model(**attributes, crop_padding=1)
    got = dict(zip([o.name for o in model.graph.output], session(model).run(
        None, {'decoded_boxes': boxes, 'class_scores': scores, 'coef': coef, 'proto': proto})))
    ref = fast_nms(boxes, scores, **attributes)
    np.testing.assert_array_equal(got['num_dets'], ref.num_dets)
    np.testing.assert_array_equal(got['classes'], ref.classes)
    np.testing.assert_array_equal(got['scores'], ref.scores)
    np.testing.assert_array_equal(got['boxes'], ref.boxes)
    np.testing.assert_allclose(got['masks'], assemble_masks(proto, coef, ref.indices, ref.boxes, ref.num_dets,
                                                            crop_padding=1), rtol=0, atol=1e-5)
