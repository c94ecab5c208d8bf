"""The TensorRT plugins: registration, engines that use them in place of the function bodies, and
their outputs against the numpy references. GPU tests (TensorRT >= 10.8 and an NVIDIA GPU); on
other hosts they skip with the reason, and the CPU-side checks here still run."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from plugins import register_tensorrt_plugins
from plugins.bench import UNAVAILABLE, main as bench_main, unavailable_reason
from plugins.fast_nms.reference import fast_nms
from plugins.mask_assembly.reference import assemble_masks
from plugins.onnx_model import nms_and_masks_model
from tests.plugins.cases import random_boxes, random_scores


def test_registration_says_why_it_cannot_register():
    registered, reason = register_tensorrt_plugins()
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        assert not registered and 'tensorrt.plugin' in reason and 'function bodies' in reason
    else:
        assert registered and reason == ''


def test_bench_says_why_it_cannot_run(capsys):
    reason = unavailable_reason()
    if reason is None:
        pytest.skip('this host can run the benchmark; `make bench-plugins` does')
    assert bench_main([]) == UNAVAILABLE
    assert reason in capsys.readouterr().err


@pytest.mark.gpu
def test_plugins_are_in_the_registry():
    import tensorrt as trt

    assert register_tensorrt_plugins() == (True, '')
    registry = trt.get_plugin_registry()
    for name in ('FastNMS', 'MaskAssembly'):
        assert registry.get_creator(name, '1', 'yolact') is not None, name


def postprocess_inputs(batch: int, seed: int):
    """decoded_boxes [B, 400, 4], class_scores [B, 400, 6], coef [B, 400, 8], proto [B, 24, 20, 8]."""
    rng = np.random.default_rng(seed)
    return {'decoded_boxes': random_boxes(rng, (batch, 400)),
            'class_scores': random_scores(rng, batch, 400, 6, 0.05, 16),
            'coef': np.tanh(rng.normal(size=(batch, 400, 8))).astype(np.float32),
            'proto': np.maximum(rng.normal(size=(batch, 24, 20, 8)), 0).astype(np.float32)}


@pytest.mark.gpu
@pytest.mark.parametrize('cross_class', [False, True])
@pytest.mark.parametrize('fp16', [False, True], ids=['fp32', 'fp16'])
def test_engine_with_plugins_equals_reference(fp16, cross_class):
    import torch

    from plugins.bench import EngineRunner, build_engine

    assert register_tensorrt_plugins() == (True, '')
    attributes = dict(conf_thresh=0.05, iou_thresh=0.5, top_k=200, max_dets=100, cross_class=cross_class)
    model = nms_and_masks_model(**attributes, crop_padding=1,
                              float_type=TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT)
    sample = postprocess_inputs(1, 0)
    shapes = {name: ((1, *x.shape[1:]), (2, *x.shape[1:]), (4, *x.shape[1:])) for name, x in sample.items()}
    engine, plugin_layers = build_engine(model.SerializeToString(), shapes, fp16=fp16)
    assert plugin_layers == 2  # both ops are plugins, not their function bodies
    runner = EngineRunner(engine)
    dtype = torch.float16 if fp16 else torch.float32
    for batch, seed in ((1, 1), (3, 2), (4, 3)):
        feeds = {name: torch.from_numpy(x).cuda().to(dtype) for name, x in postprocess_inputs(batch, seed).items()}
        got = {name: t.float().cpu().numpy() for name, t in runner(dict(feeds)).items()}
        torch.cuda.synchronize()
        inputs = {name: t.float().cpu().numpy() for name, t in feeds.items()}  # what the engine saw
        ref = fast_nms(inputs['decoded_boxes'], inputs['class_scores'], **attributes)
        np.testing.assert_array_equal(got['num_dets'], ref.num_dets)
        np.testing.assert_array_equal(got['det_indices'], ref.indices)
        np.testing.assert_array_equal(got['classes'], ref.classes)
        np.testing.assert_array_equal(got['scores'], ref.scores)
        np.testing.assert_array_equal(got['boxes'], ref.boxes)
        masks = assemble_masks(inputs['proto'], inputs['coef'], ref.indices, ref.boxes, ref.num_dets, crop_padding=1)
        np.testing.assert_allclose(got['masks'], masks, rtol=0, atol=1e-3 if fp16 else 1e-5)
