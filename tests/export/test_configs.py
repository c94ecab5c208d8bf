"""Every kind of named config exports. yolact_base at full size (random weights, with
post-processing); darknet53 (the other backbone kind and normalisation) and im700 (another input
size and prior layout) as raw heads with a shallow backbone and narrow heads, which keeps what
differs between configs and costs less. yolact_resnet50 differs from yolact_base only in block
count and yolact_im400 from yolact_im700 only in size; tracing costs ~10 s a config on 2 cores,
so they are left out of the suite (`python -m export --config NAME` exports them)."""

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import build_onnx, read_metadata
from yolact_torch.config import get_config
from yolact_torch.preprocess import Normalize
from yolact_torch.yolact import Yolact
from runtime.contract import INPUT_NAME, POSTPROCESS_OUTPUTS, RAW_OUTPUTS

SHALLOW_LAYERS = {'resnet': (1, 1, 1, 1), 'darknet': (1, 1, 1, 1, 1)}
REDUCED = ('yolact_darknet53', 'yolact_im700')


def shallow(cfg):
    backbone = dataclasses.replace(cfg.backbone, layers=SHALLOW_LAYERS[cfg.backbone.kind])
    return dataclasses.replace(cfg, backbone=backbone, fpn_features=32, proto_channels=32, head_channels=32)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])


@pytest.mark.slow
def test_yolact_base_exports_with_postprocessing():
    cfg = get_config('yolact_base')
    torch.manual_seed(0)
    model = build_onnx(Yolact(cfg).eval(), cfg)
    assert read_metadata(model).config == 'yolact_base'
    images = np.random.default_rng(0).integers(0, 256, (1, *cfg.input_size, 3), dtype=np.uint8)
    outputs = dict(zip(POSTPROCESS_OUTPUTS, session(model).run(list(POSTPROCESS_OUTPUTS), {INPUT_NAME: images})))
    max_dets = cfg.max_num_detections
    assert outputs['num_dets'].shape == (1,) and 0 <= outputs['num_dets'][0] <= max_dets
    assert outputs['boxes'].shape == (1, max_dets, 4)
    assert outputs['masks'].shape == (1, max_dets, 138, 138)  # the original's 138 x 138 prototypes at 550


@pytest.mark.parametrize('name', REDUCED)
def test_config_raw_head_matches_torch(name):
    cfg = shallow(get_config(name))
    torch.manual_seed(0)
    yolact = Yolact(cfg).eval()
    model = build_onnx(yolact, cfg, postprocess=False)
    assert read_metadata(model).input_size == cfg.input_size
    images = np.random.default_rng(0).integers(0, 256, (2, *cfg.input_size, 3), dtype=np.uint8)
    got = dict(zip(RAW_OUTPUTS, session(model).run(list(RAW_OUTPUTS), {INPUT_NAME: images})))
    with torch.no_grad():
        ref = yolact(Normalize(cfg)(torch.from_numpy(images)))
    np.testing.assert_array_equal(got['priors'], yolact.priors.numpy())
    np.testing.assert_allclose(got['conf'], torch.softmax(ref.conf, -1).numpy(), rtol=0, atol=1e-5)
    for field in ('loc', 'coef', 'proto'):
        np.testing.assert_allclose(got[field], getattr(ref, field).numpy(), rtol=1e-4, atol=1e-4, err_msg=field)
