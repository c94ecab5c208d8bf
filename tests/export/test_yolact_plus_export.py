"""YOLACT++ exported: official-layout checkpoints (random weights, ResNet-50 and ResNet-101) loaded
by file name, exported at a small input size, and onnxruntime equal to torch at the raw outputs and
at the final (re-scored) detections. The deformable convolutions are `yolact::DeformConv2d`
function nodes; the re-scoring is standard ops after MaskAssembly."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import export_onnx
from yolact_torch.checkpoint import load_model
from yolact_torch.postprocess import detect
from yolact_torch.preprocess import Normalize
from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS, RAW_OUTPUTS
from tests.gpu.compare import assert_equal_detections
from tests.yolact_torch.plus_checkpoints import PLUS_FILES, random_plus_state, small

# DCN layers of each official config (test_yolact_plus checks which blocks).
DCN_LAYERS = {'yolact_plus_resnet50': 13, 'yolact_plus_base': 11}


@pytest.fixture(scope='module', params=sorted(PLUS_FILES))
def exported(request, tmp_path_factory):
    """(model, cfg, raw ONNX path, post-processed ONNX path) of one official config at the small size."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    path = folder / PLUS_FILES[name]
    torch.save(random_plus_state(name), path)
    _, cfg = load_model(path)  # the config from the file name
    assert cfg.name == name
    model, cfg = load_model(path, small(cfg))
    raw = export_onnx(model, cfg, folder / 'raw.onnx', postprocess=False)
    full = export_onnx(model, cfg, folder / 'model.onnx')
    return model, cfg, raw, full


@pytest.fixture(scope='module')
def images():
    return np.random.default_rng(1).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


def run(path, images):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: images})))


def test_graph_has_one_deform_conv_node_per_dcn_layer(exported):
    model, cfg, raw, full = exported
    for path in (raw, full):
        onnx_model = onnx.load(path)
        nodes = [n for n in onnx_model.graph.node if n.domain == 'yolact' and n.op_type == 'DeformConv2d']
        assert len(nodes) == DCN_LAYERS[cfg.name]
        assert ('yolact', 'DeformConv2d') in {(f.domain, f.name) for f in onnx_model.functions}
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attributes == {'stride_h': 2, 'stride_w': 2, 'pad_h': 1, 'pad_w': 1, 'dilation_h': 1, 'dilation_w': 1,
                              'deformable_groups': 1, 'plugin_namespace': b'yolact', 'plugin_version': b'1'}
    assert not any('GridSample' == n.op_type for n in onnx.load(full).graph.node)  # only inside the function


def test_raw_outputs_equal_torch(exported, images):
    model, cfg, raw, _ = exported
    got = run(raw, images)
    with torch.no_grad():
        ref = model(Normalize(cfg)(torch.from_numpy(images)))
    assert list(got) == list(RAW_OUTPUTS)
    for name, value in (('loc', ref.loc), ('coef', ref.coef), ('proto', ref.proto)):
        np.testing.assert_allclose(got[name], value.numpy(), rtol=0, atol=1e-4, err_msg=name)
    # The test weights make class logits large (random_plus_state), so softmax spreads float32
    # rounding more than in test_onnx_export; 2e-5 was seen on ResNet-101.
    np.testing.assert_allclose(got['conf'], torch.softmax(ref.conf, -1).numpy(), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got['priors'], model.priors.numpy())


def test_rescored_detections_equal_torch(exported, images):
    model, cfg, _, full = exported
    got = run(full, images)
    with torch.no_grad():
        out = model(Normalize(cfg)(torch.from_numpy(images)))
        ref = detect(out, model.priors, cfg, maskiou_net=model.maskiou_net)
        unscored = detect(out, model.priors, cfg)
    assert list(got) == [*POSTPROCESS_OUTPUTS, BOX_SCORES]
    assert got['num_dets'].min() > 0, 'the random model should detect something, or this test proves little'
    ref = {name: value.numpy() for name, value in ref._asdict().items()}
    assert_equal_detections(got, ref, cfg.mask_threshold, f'{cfg.name} onnxruntime against torch')
    for b, n in enumerate(got['num_dets']):
        # The re-scoring happened in the graph: the scores are not Fast NMS's.
        assert not np.allclose(got['scores'][b, :n], unscored.scores[b, :n].numpy(), rtol=1e-3)
